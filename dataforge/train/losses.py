"""Training objective: L = w_lm * L_next_token + lambda * L_instruction + auxiliary terms + forgetting penalty.

- L_next_token: next-token cross-entropy over every token of every sample (fluency);
- L_instruction: cross-entropy on the response tokens only (adherence), optionally weighted across the
  records' `task` categories (uncertainty weighting with bounded log-variances, or inverse frequency);
- auxiliary: task classification (CE), instruction representation (MSE encoder vs model), temperature (MSE);
- forgetting: EWC with a diagonal Fisher from the base model, or L2-SP (distance to the pretrained weights).
All token losses are means over the tokens of the whole batch, so packing rows differently cannot change them.

Gradient accumulation and DDP: every term is computed as this micro-batch's *share* of the optimizer
step's value (sums over its tokens or samples divided by the step's totals, counted over all micro-batches
of all processes: `StepNorm`), so the shares add up to exactly the loss of one batch holding the whole
step, and so does the gradient (a mean of per-micro-batch means would weight short micro-batches up).
"""

from __future__ import annotations

from dataclasses import dataclass
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


def masked_share(tok_loss: torch.Tensor, valid: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """Sum over the valid positions / denom, summed in float64 (exact enough to match HF's loss to 1e-6)."""
    total = (tok_loss.double() * valid).sum() / denom.clamp(min=1)
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
        if counts is None:
            w = [1.0] * self.slots
        else:           # a task with no training sample gets weight 0 (none of its tokens can be in a batch)
            total, present = sum(counts), sum(1 for c in counts if c)
            w = [total / (present * c) if c else 0.0 for c in counts]
        self.register_buffer("inv_freq", torch.tensor(w, dtype=torch.float32), persistent=False)

    def log_var(self) -> torch.Tensor:
        return LOG_VAR_BOUND * torch.tanh(self.raw_log_var / LOG_VAR_BOUND)

    def slot(self, tok_task: torch.Tensor) -> torch.Tensor:
        return torch.where(tok_task < 0, self.slots - 1, tok_task)

    def counts(self, tok_task: torch.Tensor) -> torch.Tensor:
        """What these tokens add to the step's denominators: [sum of inverse-frequency weights,
        tokens per slot...] (float64)."""
        slot = self.slot(tok_task)
        w = self.inv_freq[slot].double().sum().reshape(1)
        per_slot = slot.new_zeros(self.slots, dtype=torch.float64)
        return torch.cat([w, per_slot.index_add(0, slot, torch.ones_like(slot, dtype=torch.float64))])

    def forward(self, tok_loss: torch.Tensor, tok_task: torch.Tensor,
                step_counts: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted response loss; with `step_counts` (from `counts`, summed over the optimizer step)
        this batch's share of the step's value."""
        slot = self.slot(tok_task)
        if step_counts is None:
            step_counts = self.counts(tok_task)
        step_counts = step_counts.to(tok_loss.dtype)
        if self.mode == "inverse_frequency":
            return (self.inv_freq[slot] * tok_loss).sum() / step_counts[0].clamp(min=1e-12)
        step_tokens = step_counts[1:]
        sums = tok_loss.new_zeros(self.slots).index_add(0, slot, tok_loss)
        counts = tok_loss.new_zeros(self.slots).index_add(0, slot, torch.ones_like(tok_loss))
        present = step_tokens > 0                                  # the tasks of the step (not only this batch)
        s = self.log_var()
        # this batch's share of each present task's 0.5*exp(-s)*mean + 0.5*s
        terms = (0.5 * torch.exp(-s) * sums + 0.5 * s * counts)[present] / step_tokens[present]
        return terms.sum() / present.sum().clamp(min=1)


class Anchor(nn.Module):
    """Pretrained weights (and their diagonal Fisher for EWC) to pull the fine-tuned weights towards."""

    def __init__(self, model: InstructModel, fisher: dict[str, torch.Tensor] | None,
                 ewc_weight: float, l2sp_weight: float):
        super().__init__()
        self.ewc_weight, self.l2sp_weight = ewc_weight, l2sp_weight
        if ewc_weight > 0 and fisher is None:
            raise ValueError("EWC needs the Fisher of the base model (estimate_fisher)")
        self.names = []
        self.ewc = ewc_weight > 0
        for i, (name, p) in enumerate(model.base.named_parameters()):
            if not p.requires_grad:                  # frozen weights cannot drift
                continue
            self.names.append(name)
            self.register_buffer(f"ref_{i}", p.detach().clone(), persistent=False)
            if self.ewc:
                self.register_buffer(f"fisher_{i}", fisher[name].detach().clone(), persistent=False)
        self._index = {n: i for i, (n, _) in enumerate(model.base.named_parameters())}

    def penalty(self, model: InstructModel) -> torch.Tensor:
        """0.5 * l2sp_weight * sum (w - w0)^2 + 0.5 * ewc_weight * sum F * (w - w0)^2 over the anchored weights."""
        total = torch.zeros(())
        params = dict(model.base.named_parameters())
        for name in self.names:
            i = self._index[name]
            ref = getattr(self, f"ref_{i}")
            p = params[name]
            if p.shape != ref.shape:                 # resized embeddings: only the original rows are anchored
                p = p[: ref.shape[0]]
            sq = (p.float() - ref.float()) ** 2
            total = total + 0.5 * self.l2sp_weight * sq.sum()
            if self.ewc:
                total = total + 0.5 * self.ewc_weight * (getattr(self, f"fisher_{i}") * sq).sum()
        return total


def estimate_fisher(model: InstructModel, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the base model on reference batches (squared gradients of the LM loss, averaged,
    then scaled to mean 1 so that `ewc_weight` is comparable across models)."""
    params = {n: p for n, p in model.base.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    for batch in batches:
        model.zero_grad()
        out = model(batch)
        mean_token_ce(out["logits"], model.lm_labels(batch["lm_labels"])).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2
    model.zero_grad()
    model.train(was_training)
    total = sum(float(f.sum()) for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    if total == 0:                     # no gradient at all (no targets): nothing to weight
        return fisher
    return {k: v * (count / total) for k, v in fisher.items()}


@dataclass
class StepNorm:
    """Denominators of one optimizer step: `Objective.counts` summed over its micro-batches (and processes),
    and how many (micro-batch, process) shares the step has (the forgetting penalty is split over them)."""

    counts: torch.Tensor
    shares: int = 1


# layout of Objective.counts
_LM, _RESP, _TASK, _TEMP, _SAMPLES, _WEIGHTING = range(6)


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

    def _targets(self, batch: dict[str, torch.Tensor]):
        """(LM targets, mask of LM-target positions, mask of response-target positions), shifted by one."""
        lm_labels = self.model.lm_labels(batch["lm_labels"])
        lm_valid = lm_labels[:, 1:] != IGNORE
        return lm_labels, lm_valid, (batch["resp_labels"][:, 1:] != IGNORE) & lm_valid

    def _token_tasks(self, batch: dict[str, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        """Task id of each response target (the target token's sample's task)."""
        return batch["task_ids"][batch["sample_idx"][:, 1:].clamp(min=0)][valid]

    @torch.no_grad()
    def counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What this batch adds to its step's denominators (float64): LM targets, response targets, samples
        with a task, samples with a temperature target, samples, then the task weighting's counts."""
        _, lm_valid, valid = self._targets(batch)
        t = batch["task_ids"]
        head = torch.stack([lm_valid.sum(), valid.sum(), (t >= 0).sum(),
                            torch.isfinite(batch["temp_target"]).sum(), torch.tensor(t.numel(), device=t.device)])
        head = head.to(torch.float64)
        if self.weighting is None:
            return head
        return torch.cat([head, self.weighting.counts(self._token_tasks(batch, valid))])

    def forward(self, batch: dict[str, torch.Tensor], norm: StepNorm | None = None,
                outputs_only: bool = False) -> dict[str, torch.Tensor]:
        """Loss terms of `batch`; with `norm`, this batch's shares of its optimizer step's terms.
        `outputs_only`: the model's outputs instead (eval goes through here so that FSDP, which hooks the root
        module's forward, gathers the weights)."""
        out = self.model(batch)
        if outputs_only:
            return out
        cfg = self.cfg
        if norm is None:
            norm = StepNorm(self.counts(batch))
        n = norm.counts
        logits = out["logits"]
        parts: dict[str, torch.Tensor] = {}
        # one cross-entropy pass: response targets are a subset of the all-token targets
        lm_labels, lm_valid, valid = self._targets(batch)
        tok, _ = shifted_token_ce(logits, lm_labels)
        parts["lm"] = masked_share(tok, lm_valid, n[_LM])
        parts["instruction"] = masked_share(tok, valid, n[_RESP])
        inst_term = parts["instruction"]
        if self.weighting is not None:
            inst_term = self.weighting(tok[valid], self._token_tasks(batch, valid), n[_WEIGHTING:])
            parts["instruction_weighted"] = inst_term
        total = cfg.lm_weight * parts["lm"] + cfg.instruction_weight * inst_term
        if "task_logits" in out and cfg.task_cls_weight > 0:
            t = batch["task_ids"]
            ce = F.cross_entropy(out["task_logits"].float(), t.clamp(min=0), reduction="none")
            parts["task_cls"] = (ce * (t >= 0)).sum() / n[_TASK].clamp(min=1).float()
            total = total + cfg.task_cls_weight * parts["task_cls"]
        if "inst_enc" in out and cfg.inst_repr_weight > 0:
            sq = F.mse_loss(out["inst_enc"].float(), out["pooled"].float(), reduction="sum")
            parts["inst_repr"] = sq / (n[_SAMPLES].clamp(min=1).float() * out["pooled"].shape[-1])
            total = total + cfg.inst_repr_weight * parts["inst_repr"]
        if "temperature" in out:
            tgt = batch["temp_target"]
            has = torch.isfinite(tgt)                      # samples whose task has a temperature
            sq = (out["temperature"][has] - tgt[has]) ** 2
            parts["temperature"] = sq.sum() / n[_TEMP].clamp(min=1).float()
            total = total + cfg.temperature_weight * parts["temperature"]
        if self.anchor is not None:
            parts["forgetting"] = self.anchor.penalty(self.model) / norm.shares
            total = total + parts["forgetting"]
        parts["loss"] = total
        return parts
