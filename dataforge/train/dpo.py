"""Direct Preference Optimization (`dataforge train --objective dpo`) on the pairs `dataforge pairs` makes.

Loss (Rafailov et al., the sigmoid form), per pair with chosen answer c and rejected answer r:

    delta = [log pi(c|x) - log ref(c|x)] - [log pi(r|x) - log ref(r|x)]
    L_dpo = -log sigmoid(beta * delta)                       averaged over the pairs of the batch
    L     = L_dpo + sft_weight * mean NLL of the chosen answers' tokens   (TRL's loss_type ["sigmoid", "sft"])

log pi(a|x) is the sum of the answer tokens' log-probabilities: exactly the tokens the SFT objective
learns (the answer through its end-of-turn marker, `data.PromptFormatter`). The reference is the starting
checkpoint: its log-probabilities are computed once, before the first step and before a checkpoint is
loaded on resume, so a resumed run keeps the same reference without a second model in memory.

A pair is one row: the chosen and the rejected sequence packed side by side, each attending only to
itself (the trainer's block-diagonal packing), so one forward pass gives both. The trainer's loop,
optimizer, schedule, checkpoints and DDP are shared; this module supplies the data, the plan, the
objective and the evaluation (hooks in `trainer.run_train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..records import Record
from .data import Example, PromptFormatter, collate
from .losses import shifted_token_ce


@dataclass
class PairExample(Example):
    """One side of a pair, with the reference model's log-probability of its answer."""

    ref_logp: float = 0.0


@dataclass
class Pair:
    chosen: PairExample
    rejected: PairExample

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def task_id(self) -> int:
        return self.chosen.task_id


def encode_pairs(records: Iterable[Record], fmt: PromptFormatter, drops: dict[str, int]) -> list[Pair]:
    """Tokenise each preference record's chosen and rejected answer; count every skipped record by reason."""
    out = []
    for r in records:
        if r.preference is None:
            drops["no_preference"] = drops.get("no_preference", 0) + 1
            continue
        if not r.output.strip() or not r.preference.rejected.strip():
            drops["empty_answer"] = drops.get("empty_answer", 0) + 1
            continue
        try:
            sides = [fmt.encode(x) for x in (r, r.model_copy(update={"output": r.preference.rejected}))]
        except ValueError as exc:
            reason = str(exc).replace(" ", "_")
            drops[reason] = drops.get(reason, 0) + 1
            continue
        c, rj = (PairExample(**{k: getattr(e, k) for k in e.__dataclass_fields__}) for e in sides)
        out.append(Pair(c, rj))
    return out


def collate_pairs(rows: list[list[PairExample]], pad_id: int) -> dict[str, torch.Tensor]:
    """`collate`, plus the reference log-probability of every sample (chosen, rejected, chosen, ...)."""
    batch = collate(rows, pad_id)
    batch["ref_logps"] = torch.tensor([e.ref_logp for row in rows for e in row], dtype=torch.float64)
    return batch


def answer_logps(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs per sample, per-token NLL (B, T-1), its sample index (B, T-1) with -1
    where no answer token is predicted)."""
    nll, valid = shifted_token_ce(logits, batch["resp_labels"])
    sample = torch.where(valid, batch["sample_idx"][:, 1:], torch.full_like(valid, -1, dtype=torch.long))
    n = batch["task_ids"].numel()
    sums = torch.zeros(n, dtype=torch.float64, device=logits.device)
    sums = sums.index_add(0, sample[valid], -nll[valid].double())
    return sums, nll, sample


def dpo_loss(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """The sigmoid DPO loss from per-sample answer log-probs ordered chosen, rejected, chosen, ..."""
    delta = (logps[0::2] - ref_logps[0::2]) - (logps[1::2] - ref_logps[1::2])
    return {"dpo": -F.logsigmoid(beta * delta).mean(), "reward_margin": (beta * delta).mean().detach(),
            "reward_accuracy": (delta > 0).double().mean()}


class DPOObjective(nn.Module):
    """Model + DPO loss, the trainer's `Objective` for `--objective dpo`."""

    def __init__(self, model: nn.Module, cfg: Any, pairs: list[Pair], pad_id: int, device: torch.device,
                 batch_size: int = 8):
        super().__init__()
        self.model, self.cfg = model, cfg
        reference_logps(model, pairs, pad_id, device, batch_size)

    def forward(self, batch: dict[str, torch.Tensor], outputs_only: bool = False) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        if outputs_only:
            return out
        logits = out["logits"]
        logps, nll, sample = answer_logps(logits, batch)
        parts = dpo_loss(logps, batch["ref_logps"].to(logps.device), self.cfg.dpo_beta)
        chosen_tok = (sample >= 0) & (sample % 2 == 0)
        parts["sft"] = nll[chosen_tok].double().mean() if bool(chosen_tok.any()) else logps.sum() * 0.0
        total = parts["dpo"] + self.cfg.dpo_sft_weight * parts["sft"] if self.cfg.dpo_sft_weight else parts["dpo"]
        parts["loss"] = total.float()
        return parts


@torch.no_grad()
def reference_logps(model: nn.Module, pairs: list[Pair], pad_id: int, device: torch.device, batch_size: int) -> None:
    """Fill every side's `ref_logp` with the (starting) model's answer log-probability, in eval mode."""
    was_training = model.training
    model.eval()
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k: k + batch_size]
        rows = [[p.chosen, p.rejected] for p in chunk]
        batch = {n: v.to(device) for n, v in collate(rows, pad_id).items()}
        logps, _, _ = answer_logps(model(batch)["logits"], batch)
        for p, c, r in zip(chunk, logps[0::2].tolist(), logps[1::2].tolist()):
            p.chosen.ref_logp, p.rejected.ref_logp = c, r
    model.train(was_training)


def pair_plan(pairs: list[Pair], cfg: Any, shuffle: bool = True) -> Any:
    """The trainer's `BatchPlan` over pairs: a pair is one row (never packed with other pairs)."""
    from .trainer import BatchPlan

    class PairPlan(BatchPlan):
        def rows(self, g: int) -> list[list[Example]]:  # type: ignore[override]
            return [[part for p in row for part in (p.chosen, p.rejected)] for row in super().rows(g)]

    return PairPlan(pairs, cfg.model_copy(update={"pack": False}), shuffle=shuffle)


def eval_set(batch_rows: list[list[list[PairExample]]], pad_id: int) -> Any:
    """The held-out pairs as the trainer's `EvalSet` (no lineage groups: DPO eval is per pair)."""
    from .evaluation import EvalSet

    return EvalSet([collate_pairs(rows, pad_id) for rows in batch_rows], [], [])


@torch.no_grad()
def evaluate(objective: DPOObjective, evalset: Any, device: Any, autocast: Any, rank: int = 0, world: int = 1,
             lockstep: bool = False) -> dict[str, float]:
    """DPO loss, reward accuracy and margin over the held-out pairs (the trainer's `evaluate` signature:
    with several processes each takes every N-th batch and the sums are added up)."""
    if not evalset.batches:
        return {}
    was_training = objective.training
    objective.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, reward accuracy, reward margin (each x pairs), pairs
    rounds = -(-len(evalset.batches) // world)
    for i in (j * world + rank for j in range(rounds)):
        if i >= len(evalset.batches) and not lockstep:
            break
        b = {k: v.to(device) for k, v in evalset.batches[0 if i >= len(evalset.batches) else i].items()}
        with autocast():
            parts = objective(b)
        if i >= len(evalset.batches):
            continue
        n = b["task_ids"].numel() // 2
        sums += torch.tensor([float(parts["dpo"]) * n, float(parts["reward_accuracy"]) * n,
                              float(parts["reward_margin"]) * n, n], dtype=torch.float64)
    if world > 1:
        import torch.distributed as tdist

        flat = sums.to(device)
        tdist.all_reduce(flat)
        sums = flat.cpu()
    objective.train(was_training)
    pairs = max(1.0, float(sums[3]))
    return {"eval_loss": float(sums[0]) / pairs, "eval_reward_accuracy": float(sums[1]) / pairs,
            "eval_reward_margin": float(sums[2]) / pairs}
