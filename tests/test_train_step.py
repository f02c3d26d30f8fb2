"""`train.step.accumulate`, called as the trainer calls it: the step's denominators (tokens and the
forgetting penalty's shares) come from `accumulate` itself, a gradient scaler scales every micro-batch's
backward, and an objective without step-level counts (DPO) gets the mean of its micro-batch means."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import collate  # noqa: E402
from dataforge.train.losses import Anchor, Objective  # noqa: E402
from dataforge.train.step import accumulate  # noqa: E402
from dataforge.train.trainer import Dist  # noqa: E402
from test_train_reference import TASKS, _setup  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")]


def _objective_and_batches():
    tok, _, model, _, exs, _ = _setup(attn="sdpa", segment_embedding=True, fusion=True, fusion_dim=16,
                                      fusion_heads=2, temperature_head=True, task_cls_weight=0.3)
    cfg = TrainConfig.all_mods(task_cls_weight=0.3, l2sp_weight=0.5, inst_tokens=False, fusion_dim=16,
                               fusion_heads=2)
    anchor = Anchor(model, None, 0.0, 0.5)
    with torch.no_grad():
        next(model.base.parameters()).add_(0.05)          # away from the anchor: a non-zero forgetting penalty
    obj = Objective(model, cfg, len(TASKS), anchor=anchor)
    micro = [collate([exs[:1], exs[1:2]], tok.pad_token_id), collate([exs[2:6]], tok.pad_token_id),
             collate([exs[1:3]], tok.pad_token_id)]
    whole = collate([exs[:1], exs[1:2], exs[2:6], exs[1:3]], tok.pad_token_id)
    return obj, micro, whole


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_accumulate_gives_one_batchs_terms_and_gradient_with_the_penalty_counted_once():
    obj, micro, whole = _objective_and_batches()
    obj.zero_grad()
    big = obj(whole)
    big["loss"].backward()
    g_big = _grads(obj)
    assert float(big["forgetting"]) > 1e-4                  # the penalty is really in play
    obj.zero_grad()
    sums = accumulate(obj, obj, micro, Dist())
    g_acc = _grads(obj)
    for key in ("loss", "lm", "forgetting", "temperature", "task_cls"):
        assert sums[key] == pytest.approx(float(big[key]), rel=1e-5, abs=1e-7), key
    assert g_big.keys() == g_acc.keys()
    for n in g_big:
        assert torch.allclose(g_big[n], g_acc[n], rtol=1e-4, atol=1e-7), n


def test_a_gradient_scaler_scales_every_micro_batchs_backward():
    obj, micro, _ = _objective_and_batches()
    obj.zero_grad()
    accumulate(obj, obj, micro, Dist())
    plain = _grads(obj)
    obj.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    accumulate(obj, obj, micro, Dist(), scaler=scaler)
    scaled = _grads(obj)
    for n in plain:
        assert torch.allclose(scaled[n], 8.0 * plain[n], rtol=1e-4, atol=1e-7), n


class _MeanLoss(torch.nn.Module):
    """An objective without step-level counts (as DPO's): the mean squared output of its micro-batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = batch["x"] @ self.w
        return {"loss": (out ** 2).mean(), "raw": out.mean()}


@pytest.mark.parametrize("scale", [None, 4.0])
def test_an_objective_without_counts_gets_the_mean_of_micro_batch_means(scale):
    """loss_k = mean_i (x_i . w)^2 over micro-batch k; the step is (loss_1 + loss_2) / 2, and its gradient
    is mean_k mean_i 2 (x_i . w) x_i (written out here), times the scaler's scale when there is one."""
    obj = _MeanLoss()
    xs = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 1.0], [1.0, 3.0], [0.5, 0.5]])]
    scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
    sums = accumulate(obj, obj, [{"x": x} for x in xs], Dist(), scaler=scaler)
    w = torch.tensor([1.0, -2.0])
    means = [float(((x @ w) ** 2).mean()) for x in xs]
    grad = sum((2 * (x @ w)[:, None] * x).mean(0) for x in xs) / 2
    assert sums["loss"] == pytest.approx(sum(means) / 2, rel=1e-6)
    assert sums["raw"] == pytest.approx(sum(float((x @ w).mean()) for x in xs) / 2, rel=1e-6)
    assert torch.allclose(obj.w.grad, grad * (scale or 1.0), rtol=1e-6)
    # and per process in a 2-process group the logged terms are this process's half of the mean
    obj.w.grad = None
    half = accumulate(obj, obj, [{"x": x} for x in xs], Dist(world=2))
    assert half["loss"] == pytest.approx(sum(means) / 4, rel=1e-6)
