"""Training objective: L = w_lm * L_next_token + lambda * L_instruction + auxiliary terms + forgetting penalty.

- L_next_token: next-token cross-entropy over every token of every sample (fluency);
- L_instruction: cross-entropy on the response tokens only (adherence), optionally weighted across the
  records' `task` categories (uncertainty weighting with bounded log-variances, or inverse frequency);
- auxiliary: task classification (CE), instruction representation (MSE encoder vs model), temperature (MSE);
- forgetting: EWC with a diagonal Fisher from the base model, or L2-SP (distance to the pretrained weights).
All token losses are means over the tokens of the whole batch, so packing rows differently cannot change them.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .data import IGNORE
from .model import InstructModel

LOG_VAR_BOUND = 3.0     # task weights 0.5*exp(-s) stay within [0.025, 10]: no task can be switched off


def shifted_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token loss (B,T-1) and the mask of positions that have a label."""
    lg = logits[:, :-1].float()
    tgt = labels[:, 1:]
    loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE, reduction="none")
    return loss.view(tgt.shape), tgt != IGNORE


def masked_mean(tok_loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions, summed in float64 (exact enough to match HF's loss to 1e-6)."""
    total = (tok_loss.double() * valid).sum() / valid.sum().clamp(min=1)
    return total.to(tok_loss.dtype)


def mean_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over labelled positions (same reduction as HF's ForCausalLMLoss)."""
    if not bool((labels[:, 1:] != IGNORE).any()):
        return logits.sum() * 0.0
    shifted = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE)


class TaskWeighting(nn.Module):
    """Weights L_instruction across task categories (slot n_tasks = records without a task).

    uncertainty: sum_k 0.5*exp(-s_k)*L_k + 0.5*s_k over the tasks in the batch, s_k = 3*tanh(raw_k/3);
    inverse_frequency: token-weighted mean with fixed weights N/(K*n_k) from the training set.
    """

    def __init__(self, mode: str, n_tasks: int, counts: list[int] | None = None):
        super().__init__()
        self.mode, self.slots = mode, n_tasks + 1
        if mode == "uncertainty":
            self.raw_log_var = nn.Parameter(torch.zeros(self.slots))
        counts = counts or [1] * self.slots
        total, present = sum(counts), sum(1 for c in counts if c)
        w = [total / (present * c) if c else 0.0 for c in counts]
        self.register_buffer("inv_freq", torch.tensor(w, dtype=torch.float32), persistent=False)

    def log_var(self) -> torch.Tensor:
        return LOG_VAR_BOUND * torch.tanh(self.raw_log_var / LOG_VAR_BOUND)

    def forward(self, tok_loss: torch.Tensor, tok_task: torch.Tensor) -> torch.Tensor:
        slot = torch.where(tok_task < 0, self.slots - 1, tok_task)
        if self.mode == "inverse_frequency":
            w = self.inv_freq.to(tok_loss.device)[slot]
            return (w * tok_loss).sum() / w.sum().clamp(min=1e-12)
        sums = tok_loss.new_zeros(self.slots).index_add(0, slot, tok_loss)
        counts = tok_loss.new_zeros(self.slots).index_add(0, slot, torch.ones_like(tok_loss))
        present = (counts > 0).to(tok_loss.dtype)
        per_task = sums / counts.clamp(min=1)
        s = self.log_var()
        terms = 0.5 * torch.exp(-s) * per_task + 0.5 * s
        return (terms * present).sum() / present.sum().clamp(min=1)


class Anchor(nn.Module):
    """Pretrained weights (and their diagonal Fisher for EWC) to pull the fine-tuned weights towards."""

    def __init__(self, model: InstructModel, fisher: dict[str, torch.Tensor] | None,
                 ewc_weight: float, l2sp_weight: float):
        super().__init__()
        self.ewc_weight, self.l2sp_weight = ewc_weight, l2sp_weight
        self.names = []
        for i, (name, p) in enumerate(model.base.named_parameters()):
            if not p.requires_grad:
                continue
            self.names.append(name)
            self.register_buffer(f"ref_{i}", p.detach().clone(), persistent=False)
            if fisher is not None:
                self.register_buffer(f"fisher_{i}", fisher[name].detach().clone(), persistent=False)
        self._index = {n: i for i, (n, _) in enumerate(model.base.named_parameters())}

    def penalty(self, model: InstructModel) -> torch.Tensor:
        total = None
        params = dict(model.base.named_parameters())
        for name in self.names:
            i = self._index[name]
            ref = getattr(self, f"ref_{i}")
            p = params[name]
            if p.shape != ref.shape:                 # resized embeddings: only the original rows are anchored
                p = p[: ref.shape[0]]
            sq = (p.float() - ref.float()) ** 2
            term = 0.0
            if self.l2sp_weight:
                term = term + 0.5 * self.l2sp_weight * sq.sum()
            if self.ewc_weight and hasattr(self, f"fisher_{i}"):
                term = term + 0.5 * self.ewc_weight * (getattr(self, f"fisher_{i}") * sq).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())


def estimate_fisher(model: InstructModel, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the base model on reference batches (squared gradients of the LM loss, averaged,
    then scaled to mean 1 so that `ewc_weight` is comparable across models)."""
    params = {n: p for n, p in model.base.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    n = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        out = model(batch)
        mean_token_ce(out["logits"], model.lm_labels(batch["lm_labels"])).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    total = sum(float(f.sum()) for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    scale = count / total if total > 0 else 1.0
    return {k: v * scale for k, v in fisher.items()}


class Objective(nn.Module):
    """Model + loss in one module, so DDP sees every trainable parameter (task weights included)."""

    def __init__(self, model: InstructModel, cfg, n_tasks: int, task_counts: list[int] | None = None,
                 anchor: Anchor | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.weighting = (TaskWeighting(cfg.task_weighting, n_tasks, task_counts)
                          if cfg.task_weighting != "none" else None)
        self.anchor = anchor

    def forward(self, batch: dict[str, torch.Tensor], outputs_only: bool = False) -> dict[str, torch.Tensor]:
        """Loss terms; `outputs_only`: the model's outputs instead (eval goes through here so that FSDP, which
        hooks the root module's forward, gathers the weights)."""
        cfg = self.cfg
        out = self.model(batch)
        if outputs_only:
            return out
        logits = out["logits"]
        parts: dict[str, torch.Tensor] = {}
        # one cross-entropy pass: response targets are a subset of the all-token targets
        lm_labels = self.model.lm_labels(batch["lm_labels"])
        tok, lm_valid = shifted_token_ce(logits, lm_labels)
        valid = (batch["resp_labels"][:, 1:] != IGNORE) & lm_valid
        parts["lm"] = masked_mean(tok, lm_valid)
        parts["instruction"] = masked_mean(tok, valid)
        inst_term = parts["instruction"]
        if self.weighting is not None:
            tok_task = batch["task_ids"][batch["sample_idx"][:, 1:].clamp(min=0)]
            inst_term = self.weighting(tok[valid], tok_task[valid])
            parts["instruction_weighted"] = inst_term
        total = cfg.lm_weight * parts["lm"] + cfg.instruction_weight * inst_term
        if "task_logits" in out and cfg.task_cls_weight > 0:
            t = batch["task_ids"]
            ce = F.cross_entropy(out["task_logits"].float(), t.clamp(min=0), reduction="none")
            has = (t >= 0).float()
            parts["task_cls"] = (ce * has).sum() / has.sum().clamp(min=1)
            total = total + cfg.task_cls_weight * parts["task_cls"]
        if "inst_enc" in out and cfg.inst_repr_weight > 0:
            parts["inst_repr"] = F.mse_loss(out["inst_enc"].float(), out["pooled"].float())
            total = total + cfg.inst_repr_weight * parts["inst_repr"]
        if "temperature" in out:
            tgt = batch["temp_target"]
            has = torch.isfinite(tgt)
            sq = (out["temperature"] - torch.nan_to_num(tgt, nan=0.0)) ** 2
            parts["temperature"] = (sq * has).sum() / has.sum().clamp(min=1)
            total = total + cfg.temperature_weight * parts["temperature"]
        if self.anchor is not None:
            parts["forgetting"] = self.anchor.penalty(self.model)
            total = total + parts["forgetting"]
        parts["loss"] = total
        return parts
