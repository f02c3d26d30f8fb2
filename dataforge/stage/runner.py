"""`run_stage`: the one runner behind every stage, whether a command, a pipeline step or a Ray batch.

It owns, once, what every stage needs and no stage writes again: reading the input (format, shard,
bad lines), the fingerprinted journal (a resume with other settings is refused, ``restart`` starts
over), the model's lifetime (it closes what it opened) and its metering, the outputs (written
atomically together), and the typed `StageSummary`.

A run in which more than half of the model requests failed and nothing was produced is refused
(`RequestsFailed`, one line naming the most common cause): a job never "succeeds" with nothing made. What
it did decide is still written (nothing is lost), and its journal is dropped so a re-run retries every
request instead of resuming the failures.

A `Budget` (``budget=``) prices the requests for the summary and may stop the run: the meter refuses new
requests once the job has spent it, the stage writes what it finished (stages with `partial_output`),
the journal keeps the work and records the spending, and the summary's `stopped` says why. Re-running
with a larger budget resumes.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataforgeError
from ..hashing import file_hash, stable_hash
from ..io import check_input
from ..llm import LLM, BackendConfig, run_sync, stage_llm
from .base import Stage, StageContext
from .budget import Budget, BudgetReached
from .journal import StageJournal
from .meter import MeteredLLM
from .outputs import Outputs
from .sidefiles import SideFiles
from .summary import StageSummary, Tokens


class RequestsFailed(DataforgeError):
    """Most model requests failed and the stage produced nothing."""


@contextmanager
def _model(stage: Stage, llm: LLM | None, backend: BackendConfig | dict | None) -> Iterator[MeteredLLM | None]:
    """The stage's model, metered: the caller's (left open) or one made from `backend` (closed at the end)."""
    if not stage.needs_llm():
        yield None
        return
    with stage_llm(llm, backend) as inner:
        yield MeteredLLM(inner, stage.name)


def _with_earlier_spending(budget: Budget | None, journal: StageJournal | None) -> Budget | None:
    """The budget with what earlier, stopped attempts of this run spent (their journal says) added."""
    if budget is None or journal is None or not journal.spent.total:
        return budget
    before = budget.spent_before.model_copy()
    before.add(journal.spent)
    return budget.model_copy(update={"spent_before": before})


def _prompt_hashes() -> dict[str, str]:
    from ..prompts import default_library

    return default_library().hashes()


def journal_header(stage: Stage, input_path: Path | None, model: LLM | None) -> dict[str, Any]:
    """Everything that decides the output of `stage` on `input_path` (see `journal`)."""
    return {
        "stage": stage.name,
        "version": stage.version,
        "config": stage.fingerprint(),
        "input": file_hash(input_path) if input_path is not None else None,
        "side_inputs": stage.side_input_hashes(),
        "model": f"{model.model_id} ({model.profile})" if model is not None else None,
        "prompts": stable_hash(_prompt_hashes()) if model is not None else None,
    }


def _refuse_if_requests_failed(name: str, model: MeteredLLM | None, outputs: Outputs) -> None:
    if model is None:
        return
    t = model.tokens()
    if t.requests and 2 * t.failed > t.requests and outputs.produced() == 0:
        cause = model.failures.most_common(1)[0][0] if model.failures else "unknown"
        raise RequestsFailed(f"{name}: {t.failed} of {t.requests} model requests failed and nothing was produced "
                             f"(most common cause: {cause})")


def run_stage(stage: Stage | type[Stage], input_path: str | os.PathLike | None, output_path: str | os.PathLike,
              cfg: Any = None, *, llm: LLM | None = None, backend: BackendConfig | dict | None = None,
              progress: bool = True, restart: bool = False, empty_ok: bool = False,
              budget: Budget | None = None, mapper: Any = None) -> StageSummary:
    """Run `stage` over `input_path` into `output_path` (and its side files); returns the summary.

    `llm`: a model to borrow (left open); without it the stage opens one from `backend` (a BackendConfig,
    its fields, or None for the environment) if it needs one. `restart`: drop an unfinished run's journal
    instead of resuming it. `empty_ok`: an empty input is zero records, not an error (a pipeline's empty
    shard). `input_path` None: a stage that may run without input (`Stage.input_optional`). `budget`: prices
    for the summary's costs and limits the run stops at (see `budget`). `mapper`: where the stage's
    record-parallel work (`ctx.map`) runs (default: here; a `RayMapper` sends it to Ray workers, whose model
    usage is added to this run's)."""
    if not isinstance(stage, Stage):
        stage = stage(cfg if cfg is not None else stage.Config())
    if input_path is None and not stage.input_optional:
        raise DataforgeError(f"{stage.name}: needs an input file")
    input_path, side = (Path(input_path) if input_path is not None else None), SideFiles(output_path)
    t0 = time.time()
    if stage.owns_run:
        check_input(input_path)
        details = stage.run_alone(input_path, Path(output_path), progress=progress)
        return StageSummary(stage=stage.name, input=str(input_path), output=str(output_path),
                            records_in=int(details.get("records_in") or 0), details=details,
                            wall_s=round(time.time() - t0, 2))
    if input_path is not None and not (empty_ok and input_path.is_file() and input_path.stat().st_size == 0):
        check_input(input_path)
    side.check_writable(*stage.side_outputs(side).values(), *(p for p, _ in stage.copies()))
    with _model(stage, llm, backend) as model:
        journal = None
        if stage.journaled:
            journal = StageJournal(side.journal, journal_header(stage, input_path, model), restart=restart)
        budget = _with_earlier_spending(budget, journal)
        if model is not None and budget is not None and budget.limited:
            model.budget = budget
        outputs = Outputs(side.output, stage.cfg.output_format(), stage.side_outputs(side), stage.copies())
        if mapper is not None:
            mapper.bind(model)
        ctx = StageContext(stage.name, input_path, side, stage.cfg, progress=progress, llm=model, journal=journal,
                           outputs=outputs, empty_ok=empty_ok, mapper=mapper)
        side.legacy_bad_lines.unlink(missing_ok=True)  # a stale one from before the rename would mislead
        details: dict[str, Any] = {}
        try:
            try:
                pending = stage.process(ctx.records(), ctx)
                if inspect.isawaitable(pending):
                    run_sync(pending)
            except BudgetReached as stop:
                ctx.stopped = str(stop)
            if ctx.stopped is None or stage.partial_output:
                details = stage.finish(ctx)
                if ctx.mapper.report is not None:
                    details = {**details, "ray": ctx.mapper.report}
                outputs.commit()  # a refused run below still leaves its (complete, truthful) outputs: nothing lost
            else:
                outputs.abort()  # this stage writes only complete outputs; its journal keeps the work
        except BaseException:
            outputs.abort()
            if journal is not None:
                _keep_or_drop(journal, model)
            raise
        finally:
            shutil.rmtree(side.work, ignore_errors=True)  # scratch state; a resumed run rebuilds it from the journal
        if journal is not None:
            if ctx.stopped is not None:
                journal.record_spent(model.tokens() if model is not None else Tokens())
                journal.close()  # the work so far, for the re-run with a larger budget
            else:
                journal.discard()  # finished (or refused: then a re-run retries every request)
        _refuse_if_requests_failed(stage.name, model, outputs)
        return _summary(stage, ctx, outputs, model, details, time.time() - t0, budget)


def _keep_or_drop(journal: StageJournal, model: MeteredLLM | None) -> None:
    """After an error or an interrupt: keep the journal when it holds work (and note the spending)."""
    if journal.holds_work():
        journal.record_spent(model.tokens() if model is not None else Tokens())
        journal.close()
    else:
        journal.discard()


def _summary(stage: Stage, ctx: StageContext, outputs: Outputs, model: MeteredLLM | None,
             details: dict[str, Any], wall: float, budget: Budget | None = None) -> StageSummary:
    files = {**outputs.paths(), **ctx.files} if ctx.stopped is None or stage.partial_output else {}
    if ctx.read_stats.bad:
        files["bad_lines"] = str(ctx.side.bad_lines)
    return StageSummary(
        stage=stage.name, input=str(ctx.input) if ctx.input is not None else "", output=str(ctx.side.output),
        records_in=ctx.records_in,
        out=outputs.by_status(), files=files, bad_lines=ctx.read_stats.bad,
        bad_by_reason=dict(ctx.read_stats.reasons.most_common()), resumed=ctx.resumed,
        model=model.model_id if model is not None else None, profile=model.profile if model is not None else None,
        profile_reason=model.profile_decision.reason if model is not None else None,
        tokens=model.tokens() if model is not None else Tokens(),
        tokens_by_operation=dict(model.by_operation) if model is not None else {},
        failures=dict(model.failures) if model is not None else {}, wall_s=round(wall, 2), details=details,
        **_costs(model, budget, ctx.stopped))


def _costs(model: MeteredLLM | None, budget: Budget | None, stopped: str | None) -> dict[str, Any]:
    """Time per request, cost in all and per operation (with prices), the budget block, why it stopped."""
    out: dict[str, Any] = {"stopped": stopped}
    if model is not None and model.sent:
        out["seconds_per_request"] = round(model.seconds_per_request(), 4)
    if budget is not None and budget.prices is not None and model is not None:
        out["cost_usd"] = round(budget.prices.cost(model.tokens()), 6)
        out["cost_by_operation"] = {op: round(budget.prices.cost(t), 6) for op, t in model.by_operation.items()}
    if budget is not None and budget.limited:
        out["budget"] = budget.report(model.tokens() if model is not None else Tokens(), stopped)
    return out
