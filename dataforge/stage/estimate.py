"""`--dry-run`: what a model-calling stage will cost, measured on a small real sample, before running it.

Every stage that talks to a model gets it from here, the same way: the stage says how to cut a sample
(`Stage.sample_plan`: a few input records, e.g. one round for evolve, one batch for self-instruct) and
by how much the whole job is larger; the runner runs that sample for real against the configured model
(answers are not read from the request cache, so they are real requests with real times, but they are
stored there, so the job later reuses them); the measured requests, tokens and time per request are
scaled to the whole job. Wall time is bound by the requests: the projected requests times the median
time per request, divided by the requests the job keeps in flight (the backend's concurrency, or the
stage's own limit). It assumes the server keeps that time per request under the job's load, and leaves
out local work (embeddings, a local judge), which matters only when requests are fast.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ..errors import DataforgeError
from ..io import RecordWriter, read_records
from ..shard import select
from .budget import Budget
from .summary import StageSummary, Tokens

if TYPE_CHECKING:
    from ..llm import BackendConfig, LLM
    from .base import Stage
    from .config import StageConfig


@dataclass
class SamplePlan:
    """How a dry run samples a stage: the config and number of input records of the sample run, and how
    many times larger the whole job is (requests and tokens scale by it)."""

    cfg: "StageConfig"
    records: int
    scale: float | None  # None: only known once the sample ran (`Stage.sample_scale`)
    how: str


class Projection(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    wall_s: float | None = None
    cost_usd: float | None = None


class Estimate(BaseModel):
    """A dry run's figures: what the sample used and what the whole job is projected to use."""

    stage: str
    model: str | None = None
    input_records: int
    sample: dict[str, Any] = Field(default_factory=dict)
    scale: float | None = None
    parallel: int = 1
    projected: Projection = Field(default_factory=Projection)
    by_operation: dict[str, dict[str, Any]] = Field(default_factory=dict)
    records_out: int | None = Field(None, description="records the job is projected to write (not rejected)")
    notes: list[str] = Field(default_factory=list)


def _count(path: Path, stage: "Stage") -> int:
    return sum(1 for _ in select(read_records(path, stage.cfg.input_format()), stage.cfg.shard_spec()))


def _write_sample(path: Path, stage: "Stage", n: int, out: Path) -> int:
    written = 0
    with RecordWriter(out) as w:
        for r in select(read_records(path, stage.cfg.input_format()), stage.cfg.shard_spec()):
            if written >= n:
                break
            w.write(r)
            written += 1
    return written


def _parallel(stage: "Stage", backend: "BackendConfig", n_input: int) -> int:
    per_backend = backend.concurrency if backend.resolved_backend in ("openai", "vllm") else 1
    return max(1, min(per_backend, stage.parallel_requests(n_input)))


def _scaled(t: Tokens, scale: float, budget: Budget | None) -> dict[str, Any]:
    out = {"requests": round(t.requests * scale), "prompt_tokens": round(t.prompt * scale),
           "completion_tokens": round(t.completion * scale)}
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    cost = budget.cost(t) if budget is not None else None
    out["cost_usd"] = round(cost * scale, 6) if cost is not None else None
    return out


def project(stage: "Stage", summary: StageSummary, plan: SamplePlan, n_input: int, backend: "BackendConfig",
            budget: Budget | None = None) -> Estimate:
    """Scale a sample run's summary to the whole job."""
    scale = plan.scale if plan.scale is not None else stage.sample_scale(summary, n_input)
    est = Estimate(stage=stage.name, model=summary.model, input_records=n_input, scale=scale,
                   parallel=_parallel(stage, backend, n_input))
    t = summary.tokens
    est.sample = {"how": plan.how, "records": summary.records_in, "requests": t.requests, "cached": t.cached,
                  "failed": t.failed, "prompt_tokens": t.prompt, "completion_tokens": t.completion,
                  "produced": summary.produced, "wall_s": summary.wall_s,
                  "seconds_per_request": summary.seconds_per_request}
    if scale is None:
        est.notes.append("the sample made nothing to scale from (no new task, no record): no projection; "
                         "try a larger sample or check the model's answers")
        return est
    proj = _scaled(t, scale, budget)
    if summary.seconds_per_request is not None:
        proj["wall_s"] = round(proj["requests"] * summary.seconds_per_request / est.parallel, 1)
    est.projected = Projection(**proj)
    est.by_operation = {op: _scaled(tok, scale, budget) for op, tok in sorted(summary.tokens_by_operation.items())}
    est.records_out = round(summary.produced * scale)
    if t.failed:
        est.notes.append(f"{t.failed} of {t.requests} sample requests failed; the projection counts them as sent")
    if t.cached:
        est.notes.append(f"{t.cached} sample requests were answered by the cache (no tokens, no time)")
    return est


def _cache_of(model: "LLM") -> Any:
    """The request cache layer of a model (wrappers peeled off), or None without a cache."""
    from ..llm.cache import CachedLLM

    while model is not None and not isinstance(model, CachedLLM):
        model = model.__dict__.get("inner")
    return model


def estimate_stage(stage: "Stage", input_path: str | Path | None, *, backend: "BackendConfig", budget: Budget | None = None,
                   n_input: int | None = None, sample_output: Path | None = None,
                   llm: "LLM | None" = None) -> Estimate:
    """Run the stage's sample for real and project the whole job. `n_input`: records the whole job reads
    (default: counted in `input_path`; a pipeline passes the projection of the stage before).
    `sample_output`: where to keep the sample's output (a pipeline feeds it to the next stage's sample)."""
    from ..llm import make_llm, run_sync
    from .runner import run_stage

    if input_path is None and not stage.input_optional:
        raise DataforgeError(f"{stage.name}: needs an input file")
    input_path = Path(input_path) if input_path is not None else None
    n = n_input if n_input is not None else _count(input_path, stage) if input_path is not None else 0
    if n == 0 and not stage.input_optional:
        raise DataforgeError(f"{input_path}: no records to estimate from")
    plan = stage.sample_plan(n)
    own = llm is None
    model = llm if llm is not None else make_llm(backend)
    inner = _cache_of(model)
    if inner is not None:
        inner.read = False  # real requests, real times; the answers still go into the cache
    try:
        with tempfile.TemporaryDirectory(prefix="dataforge-dry-run-") as tmp:
            sample_in: Path | None = None  # a stage that needs no input (magpie) may sample without one
            if input_path is not None and plan.records:
                sample_in = Path(tmp) / "sample.jsonl"
                if _write_sample(input_path, stage, plan.records, sample_in) == 0:
                    raise DataforgeError(f"{input_path}: no records to estimate from")
            out = sample_output or Path(tmp) / "sample-out.jsonl"
            sample_stage = type(stage)(plan.cfg)
            t0 = time.time()
            summary = run_stage(sample_stage, sample_in, out, llm=model, progress=False, restart=True,
                                budget=budget.model_copy(update={"tokens": None, "usd": None}) if budget else None)
            summary.wall_s = round(time.time() - t0, 2)
    finally:
        if inner is not None:
            inner.read = True
        if own:
            run_sync(model.aclose())
    est = project(stage, summary, plan, n, backend, budget)
    if inner is not None:
        est.notes.append(f"the sample's {summary.tokens.requests} answers are in the request cache: the job reuses them")
    return est


def render_estimate(est: Estimate) -> list[str]:
    """The estimate as lines of text for the terminal."""
    s, p = est.sample, est.projected
    lines = [f"{est.stage}: dry run on {s.get('how')} ({est.model or 'no model'})",
             f"  sample: {s.get('requests', 0):,} requests, {s.get('prompt_tokens', 0):,} prompt + "
             f"{s.get('completion_tokens', 0):,} completion tokens, {s.get('wall_s', 0):.1f} s"
             + (f", {s['seconds_per_request']:.2f} s per request" if s.get("seconds_per_request") else "")]
    if est.scale is not None:
        wall = _duration(p.wall_s) if p.wall_s is not None else "unknown"
        cost = f"${p.cost_usd:,.4f}" if p.cost_usd is not None else "no prices given (--price-in, --price-out)"
        size = f"{est.input_records:,} input records, " if est.input_records else ""
        lines += [f"  whole job ({size}x{est.scale:,.1f}):",
                  f"    requests           {p.requests:>14,}",
                  f"    prompt tokens      {p.prompt_tokens:>14,}",
                  f"    completion tokens  {p.completion_tokens:>14,}",
                  f"    wall time          {wall:>14}  (requests only, {est.parallel} in flight)",
                  f"    cost               {cost:>14}"]
        if est.records_out is not None:
            lines.append(f"    records out        {est.records_out:>14,}")
        width = max((len(op) for op in est.by_operation), default=0)
        for op, figures in est.by_operation.items():
            c = f", ${figures['cost_usd']:,.4f}" if figures.get("cost_usd") is not None else ""
            lines.append(f"    {op:<{width}} {figures['requests']:>8,} requests, {figures['total_tokens']:>10,} tokens{c}")
    lines += [f"  note: {n}" for n in est.notes]
    return lines


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
