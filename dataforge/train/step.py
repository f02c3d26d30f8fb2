"""One optimizer step's micro-batches: instruction masking, then forward/backward with exact accumulation."""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable

import torch

from . import fsdp as fsdp_sync
from .config import TrainConfig
from .data import collate, mask_instruction
from .losses import Objective, StepNorm

if TYPE_CHECKING:
    from .trainer import BatchPlan, Dist


def step_batch(plan: BatchPlan, cfg: TrainConfig, g: int, pad_id: int, mask_id: int | None,
               collate_fn: Callable = collate) -> dict[str, torch.Tensor]:
    """Global micro-batch number g as tensors, instruction masking applied (its randomness is a function of
    (seed, g), so a resumed run masks exactly as the uninterrupted one)."""
    rows = plan.rows(g)
    if cfg.instruction_mask_prob > 0:
        rng = random.Random(f"{cfg.seed}:mask:{g}")
        rows = [[mask_instruction(e, cfg.instruction_mask_prob, cfg.instruction_mask_mode, mask_id, rng)
                 for e in row] for row in rows]
    return collate_fn(rows, pad_id)


def accumulate(train_obj: torch.nn.Module, objective: Objective, batches: list[dict[str, torch.Tensor]],
               dist: Dist, autocast=nullcontext, scaler=None, fsdp: bool = False) -> dict[str, float]:
    """Forward and backward over one optimizer step's micro-batches; returns the step's loss terms.

    Each micro-batch contributes its share of the step (see `losses.StepNorm`), so the summed gradient is
    the gradient of one batch holding every micro-batch of every process. DDP and FSDP average gradients
    over processes: the loss is multiplied by the world size to undo that.

    An objective without step-level counts (DPO: a mean over its micro-batch's pairs) gets the mean of its
    micro-batch means, exact when micro-batches hold equally many pairs (all but an epoch's last)."""
    if not hasattr(objective, "counts"):
        return _mean_of_means(train_obj, batches, dist, autocast, scaler, fsdp)
    counts = sum(objective.counts(b) for b in batches)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(counts)
    norm = StepNorm(counts, len(batches) * dist.world)
    sums: dict[str, float] = {}
    for k, batch in enumerate(batches):
        sync = k == len(batches) - 1 or dist.world == 1
        with fsdp_sync.grad_sync(train_obj, sync, fsdp), autocast():
            parts = train_obj(batch, norm)
        loss = parts["loss"] * dist.world
        (scaler.scale(loss) if scaler is not None else loss).backward()
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + float(v.detach())
    return sums


def _mean_of_means(train_obj: torch.nn.Module, batches: list[dict[str, torch.Tensor]], dist: Dist, autocast,
                   scaler, fsdp: bool) -> dict[str, float]:
    """Each micro-batch's loss over the step's micro-batches (DDP/FSDP average the processes); the logged
    terms are this process's share of the mean over every micro-batch of every process (they are summed)."""
    sums: dict[str, float] = {}
    n = len(batches)
    for k, batch in enumerate(batches):
        with fsdp_sync.grad_sync(train_obj, k == n - 1 or dist.world == 1, fsdp), autocast():
            parts = train_obj(batch)
        loss = parts["loss"] / n
        (scaler.scale(loss) if scaler is not None else loss).backward()
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + float(v.detach()) / (n * dist.world)
    return sums
