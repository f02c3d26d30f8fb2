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
from ..io import RecordWriter, read_records
from ..progress import console
from ..records import utc_now
from ..shard import shard_of
from . import order
from .manifest import Manifest, count_records, environment_record, file_hash, prompt_hashes, scrub
from .spec import PipelineSpec, RaySettings, StageItem, stable_hash
from .stages import StageAdapter, get_adapter

# config fields naming files a stage reads besides its input: their content is part of the stage key
_SIDE_INPUTS = ("steer", "reference", "config", "ewc_reference")

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


@dataclass
class PlannedStage:
    item: StageItem
    adapter: StageAdapter
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
        adapter = get_adapter(item.kind)
        if item.input is None:
            src = prev
        elif item.input in outputs:
            src = outputs[item.input]
        else:
            src = spec.resolve(item.input)
        if src is None:
            raise DataforgeError(f"stage {item.name!r} has no input")
        out = run_dir / item.name / adapter.output_name
        mode = "full"
        if shard:
            if adapter.record_parallel:
                mode = "sharded" if sharded else "shard-select"
                sharded = True
            elif sharded:
                mode = "stop"
        planned.append(PlannedStage(item, adapter, Path(src), out, mode, idx))
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
        if self.opts.from_stage:
            spec.stage(self.opts.from_stage)  # a clear error for a typo

    # ------------------------------------------------------------------ identity

    def backend_config(self):
        if self._backend_cfg is None:
            from ..llm import BackendConfig

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
        if st.adapter.needs_llm(st.item.config):
            ident["backend"] = self.backend_identity()
        side = {f: file_hash(cfg[f]) for f in _SIDE_INPUTS if isinstance(cfg.get(f), str) and Path(cfg[f]).is_file()}
        if side:
            ident["side_inputs"] = side  # e.g. evolve's steer stats from a balance stage: new stats, new run
        shard = list(self.opts.shard) if st.mode in ("shard-select", "sharded") else None
        return {
            "input_hash": input_hash,
            "config_hash": stable_hash(ident),
            "prompts_hash": stable_hash(self.prompts()) if st.adapter.needs_llm(st.item.config) else None,
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
        if st.adapter.record_parallel and not order.order_path(st.output).is_file():
            return False, "order file missing"
        extra = getattr(self._stage_config(st), "path", None) if st.item.kind == "export" else None
        if extra and not Path(extra).exists():
            return False, "exported copy missing"
        return True, "done"

    # ------------------------------------------------------------------ running

    def run(self) -> dict[str, Any]:
        if self.opts.dry_run:
            return self._run()
        with _RunLock(self.run_dir):
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
        if any(s.adapter.needs_llm(s.item.config) for s in self.stages):
            m.data["backend"] = self._backend_description()
            m.data["prompts"] = self.prompts()
        ray = self.ray_settings()
        m.data["ray"] = ray.model_dump(mode="json") if ray else None
        forced = False
        report: list[tuple[str, str]] = []
        for st in self.stages:
            if self.opts.from_stage == st.item.name:
                forced = True
            if st.mode == "stop":
                m.stage(st.item.name).update({"stage": st.item.kind, "status": "waiting-for-merge",
                                               "note": "global stage: merge the shards, then run without --shard"})
                report.append((st.item.name, "stopped: needs all shards (dataforge merge, then run without --shard)"))
                break
            if not st.input.exists():
                raise DataforgeError(f"stage {st.item.name!r}: input {st.input} does not exist"
                                     + (" (run the earlier stages first)" if self.opts.dry_run else ""))
            input_hash = file_hash(st.input)
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
            self._run_stage(st, key, why)
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

    def _make_llm(self):
        from ..llm import make_llm

        return make_llm(self.backend_config())

    def _run_stage(self, st: PlannedStage, key: dict[str, Any], why: str) -> None:
        m = self.manifest
        st.dir.mkdir(parents=True, exist_ok=True)
        if self.run_dir.resolve() in st.input.resolve().parents:
            _drop_empty_side_files(st.input)
        entry: dict[str, Any] = {"stage": st.item.kind, "status": "running", "reason_to_run": why,
                                 "started": utc_now(), "key": key, "input": str(st.input),
                                 "output": str(st.output), "config": st.item.config.model_dump(mode="json")}
        old = (m.data.get("stages") or {}).get(st.item.name) or {}
        if old.get("key") != key:
            _clear_stale_work(st.output)  # a journal from other settings or input must not be resumed
        earlier = self._earlier_attempt_tokens(st.item.name, key)
        if earlier:
            entry["tokens_earlier_attempts"] = earlier
        m.set_stage(st.item.name, entry)
        m.save()
        if self.opts.progress:
            console.print(f"[bold]{st.item.name}[/bold]: running ({why})")
        t0 = time.perf_counter()
        llm = None
        beat = None
        try:
            stage_input, ids, keys = self._stage_input(st)
            if not st.adapter.record_parallel and stage_input.is_file() and stage_input.stat().st_size == 0:
                raise DataforgeError(f"stage {st.item.name!r}: its input {stage_input} has no records (the stage "
                                     "before it kept none; its summary in manifest.json says why)")
            ray = self.ray_settings()
            if st.adapter.record_parallel and not ids and st.item.kind != "export":
                # nothing to do (an empty shard): an empty output, so merge and later stages see one
                RecordWriter(st.output).close()
                summary, usage = {"stage": st.item.kind, "in": 0, "out": 0, "note": "no input records"}, None
            elif ray is not None and st.adapter.fan_out:
                from ..distributed import run_stage_on_ray

                summary, usage = run_stage_on_ray(st.adapter, st.item.config, stage_input, st.output,
                                                  self.backend_config(), ray, progress=self.opts.progress)
            else:
                if st.adapter.needs_llm(st.item.config):
                    llm = self._make_llm()
                    beat = _Heartbeat(m, entry, llm)
                summary = st.adapter.run(stage_input, st.output, self._stage_config(st), llm=llm,
                                         progress=self.opts.progress)
                usage = _usage_dict(llm.usage) if llm is not None else None
                if llm is not None:
                    entry["model"] = llm.model_id  # resolved (a server's first model when none was named)
                    entry["profile"] = llm.profile_decision.as_dict()  # which prompts it got, and why
            if st.adapter.record_parallel:
                shard = list(self.opts.shard) if st.mode in ("shard-select", "sharded") else None
                entry["order"] = order.canonicalize(st.output, ids, keys, shard=shard, stage=st.item.name)
        except BaseException as exc:
            entry.update({"status": "failed", "finished": utc_now(), "seconds": round(time.perf_counter() - t0, 3),
                          "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc(limit=6) if not isinstance(exc, DataforgeError) else None})
            m.save()
            raise
        finally:
            if beat is not None:
                beat.stop()
            if llm is not None:
                _close(llm)
        _drop_empty_side_files(st.output)
        entry.update(self._accounting(st, stage_input, summary, usage))
        entry.update({"status": "done", "finished": utc_now(), "seconds": round(time.perf_counter() - t0, 3),
                      "output_hash": file_hash(st.output)})
        m.save()
        if self.opts.progress:
            c = entry.get("counts", {})
            console.print(f"[green]{st.item.name}[/green]: {c.get('in', '?')} in -> {c.get('out', '?')} out "
                          f"in {entry['seconds']:.1f}s")

    def _earlier_attempt_tokens(self, name: str, key: dict[str, Any]) -> dict[str, int]:
        """Tokens an interrupted attempt of this same stage spent (kept so accounting survives a crash)."""
        old = (self.manifest.data.get("stages") or {}).get(name) or {}
        if old.get("status") not in ("running", "failed") or old.get("key") != key:
            return {}
        total: dict[str, int] = dict(old.get("tokens_earlier_attempts") or {})
        for k, v in (old.get("tokens_so_far") or {}).items():
            total[k] = total.get(k, 0) + v
        return total

    def _stage_config(self, st: PlannedStage):
        """The stage's config; a sharded export writes its copy to `<path>.shard-i-of-n<ext>`, not over the others'."""
        cfg = st.item.config
        path = getattr(cfg, "path", None) if st.item.kind == "export" else None
        if path and st.mode in ("shard-select", "sharded"):
            i, n = self.opts.shard
            p = Path(path)
            cfg = cfg.model_copy(update={"path": str(p.with_name(f"{p.stem}.shard-{i}-of-{n}{p.suffix}"))})
        return cfg

    def _stage_input(self, st: PlannedStage) -> tuple[Path, list[str], list[int]]:
        """The file the stage reads (the shard's slice for the first sharded stage) with ids and order keys."""
        if not st.adapter.record_parallel:
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

    def _accounting(self, st: PlannedStage, stage_input: Path, summary: dict, usage: dict | None) -> dict[str, Any]:
        counts: dict[str, Any] = {"in": count_records(stage_input)["records"]}
        if not st.adapter.output_is_dir:
            out = count_records(st.output)
            counts.update({"out": out["records"], "by_status": out["by_status"], "by_reason": out["by_reason"]})
            # records a stage sets aside (rejects of bad input lines, dropped/rejected records) count too
            from .manifest import count_lines, side_reasons

            files = sorted(st.output.parent.glob(f"{st.output.name}.*.jsonl"))
            files = [p for p in files if not p.name.endswith(".partial.jsonl")]
            if files:
                counts["side_files"] = {p.name[len(st.output.name) + 1:]: count_lines(p) for p in files}
                counts["side_files_by_reason"] = {p.name[len(st.output.name) + 1:]: side_reasons(p) for p in files}
        # model tokens only (a trainer's "tokens" are training tokens, not requests to a model)
        tokens = usage or (_tokens_from_summary(summary) if st.adapter.needs_llm(st.item.config) else {})
        out = {"counts": counts, "summary": scrub(summary), "tokens": tokens}
        earlier = self.manifest.stage(st.item.name).get("tokens_earlier_attempts")
        if earlier:
            out["tokens_all_attempts"] = {k: tokens.get(k, 0) + earlier.get(k, 0) for k in {*tokens, *earlier}}
        return out


class _RunLock:
    """One `dataforge run` per run directory at a time: a second one would overwrite the first's work."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> "_RunLock":
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise DataforgeError(f"{self.path.parent}: another `dataforge run` is using this run directory "
                                 f"(pid {holder}); wait for it or pick another --run-dir") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock; a killed run's lock goes with its process


def _clear_stale_work(output: Path) -> None:
    """Remove the journal of an attempt with another key (Ray batches are named by content)."""
    Path(f"{output}.partial.jsonl").unlink(missing_ok=True)


def _drop_empty_side_files(output: Path) -> None:
    """An empty `<out>.rejected.jsonl`/`.review.jsonl` says nothing, and the next stage's reader
    (rightly) refuses empty input files; remove them so a chain never trips over one."""
    if output.is_dir():
        return
    for side in output.parent.glob(f"{output.name}.*.jsonl"):
        if side.is_file() and side.stat().st_size == 0:
            side.unlink()


class _Heartbeat:
    """Saves the running stage's token usage into the manifest every few seconds, so a crash
    loses at most that much accounting."""

    def __init__(self, manifest: Manifest, entry: dict[str, Any], llm: Any, every: float = 2.0):
        import threading

        self.manifest, self.entry, self.llm, self.every = manifest, entry, llm, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dataforge-manifest-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.entry["tokens_so_far"] = _usage_dict(self.llm.usage)
            try:
                self.manifest.save()
            except Exception:  # a racing edit of the entry: the next beat writes it
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.entry.pop("tokens_so_far", None)


def _usage_dict(usage: Any) -> dict[str, int]:
    keys = ("prompt_tokens", "completion_tokens", "requests", "cached", "errors")
    d = {k: int(getattr(usage, k, 0) or 0) for k in keys}
    d["total_tokens"] = d["prompt_tokens"] + d["completion_tokens"]
    return d


def _tokens_from_summary(summary: dict) -> dict[str, int]:
    t = summary.get("tokens") or summary.get("usage") or {}
    if isinstance(t, dict):
        return {k: v for k, v in t.items() if isinstance(v, (int, float))}
    if isinstance(t, (int, float)):
        return {"total_tokens": int(t)}
    return {}


def _close(llm: Any) -> None:
    try:
        from ..llm import run_sync

        run_sync(llm.aclose())
    except Exception:  # closing is best effort; the work is already on disk
        pass


def run_pipeline(spec: PipelineSpec, opts: RunOptions | None = None) -> dict[str, Any]:
    return Engine(spec, opts).run()
