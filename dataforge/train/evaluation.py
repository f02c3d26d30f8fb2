"""Eval loss, overall and by lineage: which data the model fits worst, by how the data was made.

The eval split holds records with lineage, so the response loss is also summed per generator, per
evolution operation, per topic and per complexity level (complexity rounded to an integer 1-10). Every
figure is token-weighted (the mean over the response tokens of the group's samples), like the overall
eval loss, so the groups of one key combine to it exactly. Keys whose eval records all lack a value are
left out. With several processes each takes every N-th eval batch and the sums are added up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..records import Record
from .data import Example, collate
from .losses import shifted_token_ce

LINEAGE_KEYS = ("generator", "operation", "topic", "complexity")
NONE = "(none)"


def lineage_labels(record: Record) -> dict[str, str | None]:
    """The record's value for each lineage key (None when it has none)."""
    cx = record.complexity
    return {"generator": record.lineage.generator, "operation": record.lineage.operation, "topic": record.topic,
            "complexity": None if cx is None else str(int(round(cx)))}


@dataclass
class EvalSet:
    """Eval batches, and for each sample of each batch the index of its group under every lineage key."""

    batches: list[dict[str, torch.Tensor]]
    sample_groups: list[torch.Tensor]                       # per batch: (N, K) group numbers, -1 = key unused
    groups: list[tuple[str, str]] = field(default_factory=list)   # group number -> (key, value)

    @classmethod
    def build(cls, batch_rows: list[list[list[Example]]], records: list[Record], pad_id: int) -> "EvalSet":
        by_id = {r.id: lineage_labels(r) for r in records}
        used = [k for k in LINEAGE_KEYS if any(lab[k] is not None for lab in by_id.values())]
        groups: list[tuple[str, str]] = []
        number: dict[tuple[str, str], int] = {}
        per_batch = []
        for rows in batch_rows:
            table = []
            for ex in (e for row in rows for e in row):
                labels = by_id.get(ex.record_id, {})
                line = []
                for k in used:
                    g = (k, labels.get(k) or NONE)
                    if g not in number:
                        number[g] = len(groups)
                        groups.append(g)
                    line.append(number[g])
                table.append(line)
            per_batch.append(torch.tensor(table, dtype=torch.long).reshape(len(table), len(used)))
        return cls([collate(rows, pad_id) for rows in batch_rows], per_batch, groups)

    def __len__(self) -> int:
        return len(self.batches)


@torch.no_grad()
def evaluate(objective, evalset: EvalSet, device: torch.device, autocast: Callable, rank: int = 0,
             world: int = 1, lockstep: bool = False) -> dict[str, Any]:
    """eval_loss (response tokens), eval_lm_loss (all tokens) and eval_by {key: {value: {loss, samples,
    tokens}}}. With world > 1 every process must call it (batches are split, sums all-reduced).
    `lockstep` (FSDP, whose forward is a collective): every process runs the same number of forwards, a
    process without a batch left repeats the first one and counts nothing."""
    if not evalset.batches:
        return {}
    was_training = objective.training
    objective.eval()
    G = len(evalset.groups)
    totals = torch.zeros(4, dtype=torch.float64)             # resp sum, resp tokens, lm sum, lm tokens
    by_group = torch.zeros(G, 3, dtype=torch.float64)         # loss sum, tokens, samples
    rounds = -(-len(evalset) // world)
    for i in (j * world + rank for j in range(rounds)):
        if i >= len(evalset) and not lockstep:
            break
        b = {k: v.to(device) for k, v in evalset.batches[i if i < len(evalset) else 0].items()}
        with autocast():
            logits = objective(b, outputs_only=True)["logits"]
        if i >= len(evalset):
            continue
        resp, valid = shifted_token_ce(logits, b["resp_labels"])
        lm, lm_valid = shifted_token_ce(logits, objective.model.lm_labels(b["lm_labels"]))
        totals += torch.tensor([float((resp * valid).sum()), float(valid.sum()), float((lm * lm_valid).sum()),
                                float(lm_valid.sum())], dtype=torch.float64)
        table = evalset.sample_groups[i]
        if G and table.numel():
            n = table.shape[0]
            sample = b["sample_idx"][:, 1:][valid].cpu()
            per_loss = torch.zeros(n, dtype=torch.float64).index_add(0, sample, resp[valid].double().cpu())
            per_tok = torch.zeros(n, dtype=torch.float64).index_add(0, sample, torch.ones_like(sample, dtype=torch.float64))
            stats = torch.stack([per_loss, per_tok, (per_tok > 0).double()], dim=1)        # (N, 3)
            for k in range(table.shape[1]):
                by_group.index_add_(0, table[:, k], stats)
    if world > 1:
        import torch.distributed as tdist

        flat = torch.cat([totals, by_group.flatten()]).to(device)
        tdist.all_reduce(flat)
        flat = flat.cpu()
        totals, by_group = flat[:4], flat[4:].view(G, 3)
    objective.train(was_training)
    out: dict[str, Any] = {"eval_loss": float(totals[0] / max(1.0, float(totals[1]))),
                           "eval_lm_loss": float(totals[2] / max(1.0, float(totals[3])))}
    eval_by: dict[str, dict[str, dict[str, float]]] = {}
    for (key, value), (loss, tokens, samples) in zip(evalset.groups, by_group.tolist()):
        if samples:
            eval_by.setdefault(key, {})[value] = {"loss": round(loss / max(1.0, tokens), 6), "samples": int(samples),
                                                  "tokens": int(tokens)}
    if eval_by:
        out["eval_by"] = eval_by
    return out


def eval_table(eval_by: dict[str, dict[str, dict[str, float]]], overall: float | None = None) -> str:
    """A small text table of eval loss by lineage, worst group first within each key."""
    if not eval_by:
        return ""
    head = f"{'lineage':<11} {'value':<28} {'samples':>7} {'tokens':>7} {'eval loss':>9}"
    lines = ["eval loss by lineage (response tokens; higher = the model fits that data worse)", head,
             "-" * len(head)]
    for key in LINEAGE_KEYS:
        for value, s in sorted(eval_by.get(key, {}).items(), key=lambda kv: -kv[1]["loss"]):
            lines.append(f"{key:<11} {value[:28]:<28} {s['samples']:>7} {s['tokens']:>7} {s['loss']:>9.4f}")
    if overall is not None:
        lines.append(f"{'all':<11} {'':<28} {'':>7} {'':>7} {overall:>9.4f}")
    return "\n".join(lines)
