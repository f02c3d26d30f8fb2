"""A pipeline's prices, budget and dry-run estimate.

The budget is the job's: every stage and attempt in the run directory counts (the manifest holds what
finished stages and earlier attempts spent; a stage's own stopped attempts are in its journal). The dry
run chains the stages' samples: each model-calling stage that would run gets the previous one's sample
output as its sample input, and the previous projection of records as its input size; a stage that calls
no model passes its input on unchanged (so the projection errs on the large side).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataforgeError
from ..stage import Tokens
from ..stage.budget import Budget, make_budget

if TYPE_CHECKING:
    from ..stage.estimate import Estimate
    from .engine import Engine
    from .manifest import Manifest
    from .spec import PipelineSpec


def job_budget(spec: "PipelineSpec", price_in: float | None = None, price_out: float | None = None,
               budget_tokens: int | None = None, budget_usd: float | None = None) -> Budget | None:
    """Prices and limits: the command line's over the YAML's `prices:` and `budget:` blocks."""
    h = spec.header
    prices = h.prices.model_dump() if h.prices is not None and (price_in is None and price_out is None) else None
    return make_budget(price_in, price_out,
                       budget_tokens if budget_tokens is not None else (h.budget.tokens if h.budget else None),
                       budget_usd if budget_usd is not None else (h.budget.usd if h.budget else None), prices)


def entry_tokens(entry: dict[str, Any]) -> Tokens:
    """What one manifest stage entry spent over all its attempts (a running one: its last heartbeat)."""
    raw = entry.get("tokens_all_attempts") or entry.get("tokens") or entry.get("tokens_so_far") or {}
    return Tokens(**{k: int(raw.get(k) or 0) for k in Tokens.model_fields})


def spent_elsewhere(manifest: "Manifest", stage_name: str) -> Tokens:
    """Tokens the job's other stages have spent (the budget counts them)."""
    total = Tokens()
    for name, entry in (manifest.data.get("stages") or {}).items():
        if name != stage_name:
            total.add(entry_tokens(entry))
    return total


def stage_budget(budget: Budget | None, manifest: "Manifest", stage_name: str) -> Budget | None:
    if budget is None:
        return None
    return budget.model_copy(update={"spent_before": spent_elsewhere(manifest, stage_name)})


def estimate_pipeline(engine: "Engine", budget: Budget | None) -> list["Estimate"]:
    """Dry-run estimates of the model-calling stages that would run, chained through their samples."""
    from ..stage.estimate import estimate_stage
    from .engine import NO_INPUT

    to_run = {name for name, action in engine.last_plan if action.startswith("run")}
    estimates: list[Estimate] = []
    with tempfile.TemporaryDirectory(prefix="dataforge-dry-run-") as tmp:
        sample: Path | None = None  # the previous stage's sample output
        n: int | None = None  # the previous stage's projected records
        for st in engine.stages:
            if st.item.name not in to_run:
                continue
            if st.stage.owns_run or st.mode == "stop":
                break
            if not st.stage.needs_llm():
                continue  # passes its input on, as far as the estimate goes
            source: Path | None = sample if sample is not None else st.input
            if st.stage.input_optional and sample is None and source.name == NO_INPUT:
                source = None  # a seedless generator (magpie) first in the pipeline: it samples without input
            elif not source.exists():
                raise DataforgeError(f"stage {st.item.name!r}: input {source} does not exist")
            out = Path(tmp) / f"{st.item.name}.jsonl"
            est = estimate_stage(st.stage, source, backend=engine.backend_config(), budget=budget, n_input=n,
                                 sample_output=out)
            est.stage = st.item.name
            estimates.append(est)
            if est.records_out is None or not out.is_file() or out.stat().st_size == 0:
                break  # nothing to hand on: later stages cannot be sampled
            sample, n = out, est.records_out
    return estimates
