"""Runs a pipeline's stages in order under a run directory, one folder per stage, and keeps the
manifest current so a re-run skips what is done and redoes only what changed.

A stage is *done* when the manifest says it finished with the same key — hash of its input file,
hash of its config (plus backend identity and shard), hash of the prompt templates for stages that
talk to a model — and its output is still the file it wrote. Because a stage's input is the
previous stage's output, redoing a stage whose output comes out different redoes everything
downstream; one whose output comes out identical leaves downstream work alone.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataforgeError
from ..hashing import file_hash, stable_hash
from ..io import RecordWriter, read_records
from ..llm import LLM, BackendConfig
from ..progress import console
from ..records import utc_now
from ..shard import shard_of
from ..stage import SideFiles, Stage, run_stage
from ..stage.budget import Budget
from . import order
from .accounting import Heartbeat, add_tokens, earlier_attempt_tokens, file_counts
from .costs import stage_budget
from .lock import RunLock
from .manifest import Manifest, environment_record, prompt_hashes, scrub
from .spec import PipelineSpec, RaySettings, StageItem
from .stages import stage_class

# backend fields that change what a model answers (base_url, keys, concurrency do not)
_IDENTITY_FIELDS = ("backend", "model", "local_model", "profile")


@dataclass
class RunOptions:
    run_dir: Path | None = None
    shard: tuple[int, int] | None = None
    ray_address: str | None = None
    from_stage: str | None = None
    dry_run: bool = False
    progress: bool = True
    backend_overrides: dict[str, Any] = field(default_factory=dict)
    input: str | None = None  # replaces the YAML's input (CWD-relative)
    budget: Budget | None = None  # prices and the job's limits (see pipeline/costs.py)


NO_INPUT = "no-input.jsonl"  # what a stage that needs no input (magpie) reads when the pipeline gives it none


@dataclass
class PlannedStage:
    item: StageItem
    stage: Stage  # the registered class with this item's config (for a shard: the shard's config)
    input: Path
    output: Path
    mode: str  # full | shard-select | sharded | stop
    index: int

    @property
    def dir(self) -> Path:
        return self.output.parent


def default_run_dir(spec: PipelineSpec, shard: tuple[int, int] | None) -> Path:
    base = Path(spec.header.run_dir) if spec.header.run_dir else Path("runs") / spec.name
    if shard:
        base = base.with_name(f"{base.name}.shard-{shard[0]}-of-{shard[1]}")
    return base


def plan(spec: PipelineSpec, run_dir: Path, shard: tuple[int, int] | None) -> list[PlannedStage]:
    """Input, output and shard mode of every stage. Under --shard, global stages before the first
    record-parallel one run whole; the sharded run stops at the first global stage after it."""
    outputs: dict[str, Path] = {}
    prev = spec.resolve(spec.header.input)
    sharded = False
    planned: list[PlannedStage] = []
    for idx, item in enumerate(spec.stages):
        cls = stage_class(item.kind)
        if item.input is None:
            src = prev
        elif item.input in outputs:
            src = outputs[item.input]
        else:
            src = spec.resolve(item.input)
        if src is None and cls.input_optional:
            src = run_dir / item.name / NO_INPUT  # an empty file, made when it runs: a seedless generator
        if src is None:
            raise DataforgeError(f"stage {item.name!r} has no input")
        out = run_dir / item.name / cls.output_name
        mode = "full"
        config = item.config
        if spec.header.judge and "judge_backend" in type(config).model_fields and not config.judge_backend:
            # the job's `judge:` block: the filter stages judge with that model (merged over `backend:`)
            config = config.model_copy(update={"judge_backend": {**spec.header.backend, **spec.header.judge}})
        stage = cls(config)
        if shard:
            if cls.record_parallel:
                mode = "sharded" if sharded else "shard-select"
                sharded = True
                stage = cls(stage.for_shard(*shard))
            elif sharded:
                mode = "stop"
        planned.append(PlannedStage(item, stage, Path(src), out, mode, idx))
        outputs[item.name] = out
        prev = out
    return planned


class Engine:
    """One run of a pipeline; `run()` returns the manifest data."""

    def __init__(self, spec: PipelineSpec, opts: RunOptions | None = None):
        self.spec = spec
        self.opts = opts or RunOptions()
        self.run_dir = Path(self.opts.run_dir or default_run_dir(spec, self.opts.shard))
        if self.opts.input:
            spec.header = spec.header.model_copy(update={"input": str(Path(self.opts.input).resolve())})
        self.stages = plan(spec, self.run_dir, self.opts.shard)
        self.manifest = Manifest.load(self.run_dir)
        self._backend_cfg = None
        self._prompt_hashes: dict[str, str] | None = None
        self.last_plan: list[tuple[str, str]] = []  # what the last run() did or would do, per stage
        self.stopped: str | None = None  # why a budget stopped the run
        if self.opts.from_stage:
            spec.stage(self.opts.from_stage)  # a clear error for a typo

    # ------------------------------------------------------------------ identity

    def backend_config(self) -> BackendConfig:
        if self._backend_cfg is None:
            fields = {**self.spec.header.backend, **{k: v for k, v in self.opts.backend_overrides.items() if v is not None}}
            try:
                self._backend_cfg = BackendConfig.from_env(**fields)
            except Exception as exc:  # pydantic error on a bad backend block
                raise DataforgeError(f"{self.spec.path}: backend: {exc}") from None
        return self._backend_cfg

    def backend_identity(self) -> dict[str, Any]:
        cfg = self.backend_config().model_dump(mode="json")
        return {k: cfg.get(k) for k in _IDENTITY_FIELDS}

    def prompts(self) -> dict[str, str]:
        if self._prompt_hashes is None:
            self._prompt_hashes = prompt_hashes()
        return self._prompt_hashes

    def ray_settings(self) -> RaySettings | None:
        if self.opts.ray_address:
            base = self.spec.header.ray or RaySettings()
            return base.model_copy(update={"address": self.opts.ray_address})
        return self.spec.header.ray

    def stage_key(self, st: PlannedStage, input_hash: str | None) -> dict[str, Any]:
        cfg = st.item.config.model_dump(mode="json")
        ident: dict[str, Any] = {"stage": st.item.kind, "config": cfg, "input_from": st.item.input}
        if st.stage.needs_llm():
            ident["backend"] = self.backend_identity()
        side = {f: h for f, h in st.stage.side_input_hashes(st.item.config).items() if h is not None}
        if side:
            ident["side_inputs"] = side  # e.g. evolve's steer stats from a balance stage: new stats, new run
        shard = list(self.opts.shard) if st.mode in ("shard-select", "sharded") else None
        return {
            "input_hash": input_hash,
            "config_hash": stable_hash(ident),
            "prompts_hash": stable_hash(self.prompts()) if st.stage.needs_llm() else None,
            "shard": shard,
        }

    def is_done(self, st: PlannedStage, key: dict[str, Any]) -> tuple[bool, str]:
        entry = self.manifest.data.get("stages", {}).get(st.item.name) or {}
        if not entry:
            return False, "new"
        old = entry.get("key") or {}
        for part, why in (("input_hash", "input changed"), ("config_hash", "config changed"),
                          ("prompts_hash", "prompt templates changed"), ("shard", "shard changed")):
            if old.get(part) != key.get(part):
                return False, why
        if entry.get("status") != "done":
            status = entry.get("status", "unfinished")
            return False, "resuming the interrupted run" if status == "running" else f"last run {status}"
        if file_hash(st.output) != entry.get("output_hash"):
            return False, "output missing or edited"
        if st.stage.record_parallel and not SideFiles(st.output).order.is_file():
            return False, "order file missing"
        if any(not p.exists() for p in st.stage.extra_outputs()):
            return False, "a file it writes elsewhere is missing"
        return True, "done"

    # ------------------------------------------------------------------ running

    def run(self) -> dict[str, Any]:
        if self.opts.dry_run:
            return self._run()
        with RunLock(self.run_dir):
            self.manifest = Manifest.load(self.run_dir)  # as the last run left it, now that we hold the lock
            return self._run()

    def _run(self) -> dict[str, Any]:
        m = self.manifest
        first = not m.data.get("pipeline")
        m.data["pipeline"] = {"name": self.spec.name, "file": str(self.spec.path) if self.spec.path else None,
                              "text_hash": self.spec.text_hash}
        m.data["config"] = scrub(self.spec.config_dump())
        m.data["config_hash"] = stable_hash(self.spec.config_dump())
        m.data["run_dir"] = str(self.run_dir.resolve())
        m.data["shard"] = list(self.opts.shard) if self.opts.shard else None
        m.data["order"] = [s.item.name for s in self.stages]
        m.data["environment"] = environment_record()
        if any(s.stage.needs_llm() for s in self.stages):
            m.data["backend"] = self._backend_description()
            m.data["prompts"] = self.prompts()
        ray = self.ray_settings()
        m.data["ray"] = ray.model_dump(mode="json") if ray else None
        budget = self.opts.budget
        m.data["prices"] = budget.prices.model_dump() if budget is not None and budget.prices is not None else None
        forced = False
        report: list[tuple[str, str]] = []
        self.last_plan = report
        for st in self.stages:
            if self.opts.from_stage == st.item.name:
                forced = True
            if st.mode == "stop":
                m.stage(st.item.name).update({"stage": st.item.kind, "status": "waiting-for-merge",
                                               "note": "global stage: merge the shards, then run without --shard"})
                report.append((st.item.name, "stopped: needs all shards (dataforge merge, then run without --shard)"))
                break
            if st.stage.input_optional and st.input.name == NO_INPUT and not self.opts.dry_run:
                st.input.parent.mkdir(parents=True, exist_ok=True)
                st.input.touch()
            if not st.input.exists() and not (st.stage.input_optional and st.input.name == NO_INPUT):
                raise DataforgeError(f"stage {st.item.name!r}: input {st.input} does not exist"
                                     + (" (run the earlier stages first)" if self.opts.dry_run else ""))
            input_hash = file_hash(st.input) if st.input.exists() else None
            key = self.stage_key(st, input_hash)
            done, why = self.is_done(st, key)
            if done and not forced:
                report.append((st.item.name, "skip (done)"))
                if not self.opts.dry_run and self.opts.progress:
                    console.print(f"[dim]{st.item.name}: done, skipped[/dim]")
                continue
            why = "forced by --from" if forced and done else why
            if self.opts.dry_run:
                report.append((st.item.name, f"run ({why})"))
                # later stages depend on this one's output, which does not exist yet
                for later in self.stages[st.index + 1:]:
                    known = (m.data.get("stages") or {}).get(later.item.name, {}).get("status") == "done"
                    report.append((later.item.name, "run if its input changes" if known and not forced
                                   else "run (after the stages before it)"))
                break
            self.stopped = self._run_stage(st, key, why)
            if self.stopped:
                report.append((st.item.name, f"stopped ({self.stopped})"))
                break
            report.append((st.item.name, f"ran ({why})"))
        if not self.opts.dry_run:
            m.data.setdefault("runs", []).append({"finished": utc_now(), "actions": dict(report),
                                                  "first": first})
            m.data["runs"] = m.data["runs"][-20:]
            m.save()
        return {"run_dir": str(self.run_dir), "plan": report, "manifest": m.data}

    def _backend_description(self) -> dict[str, Any]:
        cfg = self.backend_config().model_dump(mode="json")
        keep = ("backend", "model", "local_model", "base_url", "profile", "concurrency", "cache_path", "no_cache")
        return scrub({k: cfg.get(k) for k in keep if k in cfg})

    def _make_llm(self) -> LLM:
        from ..llm import make_llm

        return make_llm(self.backend_config())

    def _run_stage(self, st: PlannedStage, key: dict[str, Any], why: str) -> str | None:
        """Run one stage and record it; returns why a budget stopped it (None: it finished)."""
        m = self.manifest
        st.dir.mkdir(parents=True, exist_ok=True)
        if self.run_dir.resolve() in st.input.resolve().parents:
            SideFiles(st.input).drop_empty()
        entry: dict[str, Any] = {"stage": st.item.kind, "status": "running", "reason_to_run": why,
                                 "started": utc_now(), "key": key, "input": str(st.input),
                                 "output": str(st.output), "config": st.item.config.model_dump(mode="json")}
        old = (m.data.get("stages") or {}).get(st.item.name) or {}
        earlier = earlier_attempt_tokens(old, key)
        if earlier:
            entry["tokens_earlier_attempts"] = earlier
        m.set_stage(st.item.name, entry)
        m.save()
        if self.opts.progress:
            console.print(f"[bold]{st.item.name}[/bold]: running ({why})")
        t0 = time.perf_counter()
        try:
            stage_input, ids, keys = self._stage_input(st)
            if not (st.stage.record_parallel or st.stage.input_optional) and stage_input.is_file() \
                    and stage_input.stat().st_size == 0:
                raise DataforgeError(f"stage {st.item.name!r}: its input {stage_input} has no records (the stage "
                                     "before it kept none; its summary in manifest.json says why)")
            # a journal left by an attempt with another key (other settings or input) is not resumed
            summary = self._execute(st, stage_input, entry, restart=old.get("key") != key)
            if summary.get("stopped"):
                return self._stopped(st, entry, summary, earlier, t0)
            if st.stage.record_parallel:
                shard = list(self.opts.shard) if st.mode in ("shard-select", "sharded") else None
                entry["order"] = order.canonicalize(st.output, ids, keys, shard=shard, stage=st.item.name)
        except BaseException as exc:
            entry.update({"status": "failed", "finished": utc_now(), "seconds": round(time.perf_counter() - t0, 3),
                          "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc(limit=6) if not isinstance(exc, DataforgeError) else None})
            m.save()
            raise
        SideFiles(st.output).drop_empty()
        tokens = summary.get("tokens") or {}
        entry.update({"counts": file_counts(stage_input, st.output, st.stage.output_is_dir),
                      "summary": scrub(summary), "tokens": tokens})
        if earlier:
            entry["tokens_all_attempts"] = add_tokens(tokens, earlier)
        entry.update({"status": "done", "finished": utc_now(), "seconds": round(time.perf_counter() - t0, 3),
                      "output_hash": file_hash(st.output)})
        m.save()
        if self.opts.progress:
            c = entry.get("counts", {})
            console.print(f"[green]{st.item.name}[/green]: {c.get('in', '?')} in -> {c.get('out', '?')} out "
                          f"in {entry['seconds']:.1f}s")
        return None

    def _stopped(self, st: PlannedStage, entry: dict[str, Any], summary: dict[str, Any], earlier: dict[str, int],
                 t0: float) -> str:
        """A stage its budget stopped: on record as such (not done), its spending kept for the budget."""
        tokens = summary.get("tokens") or {}
        entry.update({"status": "stopped-budget", "stopped": summary["stopped"], "summary": scrub(summary),
                      "tokens": tokens, "finished": utc_now(), "seconds": round(time.perf_counter() - t0, 3)})
        if earlier:
            entry["tokens_all_attempts"] = add_tokens(tokens, earlier)
        self.manifest.save()
        if self.opts.progress:
            console.print(f"[yellow]{st.item.name}[/yellow]: stopped ({summary['stopped']})")
        return str(summary["stopped"])

    def _execute(self, st: PlannedStage, stage_input: Path, entry: dict[str, Any], *, restart: bool) -> dict[str, Any]:
        """Run the stage with the executor that fits: Ray batches, or `run_stage` here with the job's model
        (its record-parallel work on Ray workers when the job has a ray block and the stage hands work out)."""
        ray = self.ray_settings()
        budget = stage_budget(self.opts.budget, self.manifest, st.item.name) if st.stage.needs_llm() else None
        if ray is not None and st.stage.can_fan_out():
            from .ray_executor import run_stage_on_ray

            if budget is not None and budget.limited:
                raise DataforgeError("a token or dollar budget is not enforced on Ray workers yet: run without "
                                     "--ray, or without a budget")

            summary = run_stage_on_ray(st.stage, stage_input, st.output, self.backend_config(), ray,
                                       progress=self.opts.progress)
            return {**summary, "input": str(stage_input), "output": str(st.output)}
        mapper = None
        if ray is not None and st.stage.parallel_work:
            from .ray_executor import RayMapper

            mapper = RayMapper(ray, self.backend_config())
        llm = self._make_llm() if st.stage.needs_llm() else None
        beat = Heartbeat(self.manifest, entry, llm) if llm is not None else None
        try:
            result = run_stage(st.stage, stage_input, st.output, llm=llm, progress=self.opts.progress,
                               restart=restart, empty_ok=st.stage.record_parallel or st.stage.input_optional,
                               budget=budget, mapper=mapper)
        finally:
            if beat is not None:
                beat.stop()
            if llm is not None:
                _close(llm)
        if llm is not None:
            entry["model"] = llm.model_id  # resolved (a server's first model when none was named)
            entry["profile"] = llm.profile_decision.as_dict()  # which prompts it got, and why
        return result.to_dict()

    def _stage_input(self, st: PlannedStage) -> tuple[Path, list[str], list[int]]:
        """The file the stage reads (the shard's slice for the first sharded stage) with ids and order keys."""
        if not st.stage.record_parallel:
            return st.input, [], []
        ids, keys = order.input_keys(st.input)
        if st.mode != "shard-select":
            return st.input, ids, keys
        i, n = self.opts.shard
        sliced = st.dir / "input.shard.jsonl"
        chosen: list[int] = []
        with RecordWriter(sliced) as w:
            for pos, r in enumerate(read_records(st.input)):
                if shard_of(r.id, n) == i:
                    w.write(r)
                    chosen.append(pos)
        order.write_keys(sliced, [keys[p] for p in chosen], shard=[i, n])
        return sliced, [ids[p] for p in chosen], [keys[p] for p in chosen]


def _close(llm: LLM) -> None:
    try:
        from ..llm import run_sync

        run_sync(llm.aclose())
    except Exception:  # closing is best effort; the work is already on disk
        pass


def run_pipeline(spec: PipelineSpec, opts: RunOptions | None = None) -> dict[str, Any]:
    return Engine(spec, opts).run()
