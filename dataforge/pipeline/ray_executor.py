"""The Ray executor: a record-parallel stage's record batches fanned out to Ray workers, one backend
endpoint per worker (`dataforge run --ray ADDRESS`). Stages that also decide over the whole input
(filter, balance) and export hand only their record-parallel `Work` to the workers (`RayMapper`); the
global step stays on the driver.

Why batches of whole records: a record-parallel stage's output for a record depends on that
record alone, so any split gives the same records, and the engine's canonical order puts them back
exactly where one process would. Each worker is a Ray actor that owns one LLM client pointed at its
endpoint and runs the stage through the same `run_stage` on a batch file, so the stage's journal,
rules and lineage are the ones a local run uses; stages never know which executor runs them.

Resume: every finished batch is written atomically to ``<stage>/ray_batches/bNNNNN.jsonl`` with its
summary; a re-run skips those and only sends the rest (inside an unfinished batch, the stage's own
journal resumes when the run directory is on a filesystem the workers share).
Cache: workers open the same SQLite request cache file and key requests by the job's *logical*
backend (not the worker's endpoint), so a batch that lands on another worker after a crash still
hits the cache. Accounting: each batch returns its token usage; the driver sums them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import DataforgeError
from ..io import RecordWriter, atomic_open, read_records, write_json_atomic, write_text_atomic
from ..llm import LLM, BackendConfig
from ..progress import progress_bar
from ..stage import SideFiles, Stage
from .manifest import is_secret_name
from .spec import RaySettings
from .stages import stage_class

_LOCAL = ("local", "", None)


def ensure_ray(settings: RaySettings) -> Any:
    """Import Ray and connect (or start a local instance); reuse a connection already made."""
    try:
        import ray
    except ImportError as exc:
        raise DataforgeError("Ray is not installed: pip install 'dataforge[ray]'") from exc
    if not ray.is_initialized():
        if settings.address in _LOCAL:
            ray.init(num_cpus=settings.local_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=settings.address, log_to_driver=False)
    return ray


class _Worker:
    """Body of the Ray actor (wrapped with ray.remote at call time so importing this module needs no Ray)."""

    def __init__(self, backend: dict[str, Any], endpoint: str | None, cache_identity: str | None,
                 env: dict[str, str]):
        os.environ.update(env)
        from ..llm import BackendConfig

        fields = dict(backend)
        if endpoint:
            fields.update({"base_url": endpoint, "backend": "openai" if fields.get("backend", "auto") == "auto"
                           else fields["backend"]})
        self.cfg = BackendConfig(**fields)
        self.cache_identity = cache_identity or self.cfg.base_url
        self.endpoint = endpoint

    def _llm(self) -> LLM:
        from ..llm import make_backend

        inner = make_backend(self.cfg)
        if self.cfg.no_cache:
            return inner
        from ..llm.cache import CachedLLM, RequestCache

        return CachedLLM(inner, RequestCache(self.cfg.resolved_cache_path()), base_url=self.cache_identity)

    def run_work(self, work: Any, batch: Any) -> dict[str, Any]:
        """One batch of a stage's `Work` (opened once per worker, with its own metered model if it
        uses one); returns the result and what the model was asked for this batch."""
        from ..llm import run_sync
        from ..stage import MeteredLLM
        from ..stage.work import run_batch

        token = getattr(work, "ray_token", None)
        opened = getattr(self, "_opened", None)
        if opened is None or opened[0] != token:
            if opened is not None:
                run_sync(opened[1].aclose())  # the previous stage's work (e.g. its judge's own client)
            meter = MeteredLLM(self._llm(), work.ray_stage) if work.uses_llm() else None
            work.open(meter)
            self._opened = opened = (token, work, meter)
        _, work, meter = opened
        value = run_sync(run_batch(work, batch))
        usage = meter.take() if meter is not None else ({}, {})
        return {"value": value, "tokens": usage[0], "failures": usage[1]}

    def run_batch(self, kind: str, cfg: dict[str, Any], lines: list[str], batch_dir: str, index: int) -> dict[str, Any]:
        from ..llm import run_sync
        from ..stage import run_stage

        cls = stage_class(kind)
        stage = cls(cls.Config.model_validate(cfg))
        work = Path(batch_dir)
        work.mkdir(parents=True, exist_ok=True)
        src = work / "input.jsonl"
        if not src.is_file():
            write_text_atomic(src, "".join(line if line.endswith("\n") else line + "\n" for line in lines))
        out = work / "output.jsonl"
        llm = self._llm()
        try:
            summary = run_stage(stage, src, out, llm=llm, progress=False)
        finally:
            try:
                run_sync(llm.aclose())
            except Exception as exc:  # the shard's work is done and journaled; a failed close is worth a word only
                print(f"warning: {self.endpoint}: closing the model client failed ({type(exc).__name__}: {exc})",
                      file=sys.stderr)
        bad = SideFiles(out).bad_lines
        return {
            "lines": out.read_text(encoding="utf-8").splitlines(),
            "rejects": bad.read_text(encoding="utf-8").splitlines() if bad.is_file() else [],
            "summary": summary.to_dict(),
            "endpoint": self.endpoint,
            "batch": index,
        }


def _digest(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def _batches(path: Path, size: int) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for r in read_records(path):
        if len(out[-1]) >= size:
            out.append([])
        out[-1].append(r.model_dump_json())
    return [b for b in out if b]


def sum_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers summed, nested dicts merged key by key; other values from the first batch."""
    total: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, bool):
                total.setdefault(k, v)
            elif isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + v
            elif isinstance(v, dict):
                total[k] = sum_summaries([total.get(k, {}) if isinstance(total.get(k), dict) else {}, v])
            else:
                total.setdefault(k, v)
    return total


def _worker_env() -> dict[str, str]:
    """Settings the workers need, never credentials: Ray keeps task arguments in its object store and
    logs, so an API key must reach a worker through its own environment (set where `ray start` runs)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(("DATAFORGE_", "OPENAI_BASE_URL", "HF_", "TRANSFORMERS_")) and not is_secret_name(k)}


def _worker_backend(backend_cfg: BackendConfig, settings: RaySettings) -> tuple[dict[str, Any], list, str]:
    """(backend fields for the workers, one endpoint per worker slot, the cache identity they share)."""
    backend = backend_cfg.model_dump(mode="json")
    if not backend.get("no_cache"):
        backend["cache_path"] = str(backend_cfg.resolved_cache_path().resolve())
    endpoints = list(settings.endpoints) or [backend_cfg.base_url]
    identity = backend_cfg.base_url or "ray:" + ",".join(e or "" for e in endpoints)
    return backend, endpoints, identity


class RayMapper:
    """Runs a stage's record-parallel `Work` on Ray workers (`ctx.map` of a stage whose `parallel_work`
    is set): one task per batch, at most two batches in flight per worker, results back in batch order.
    Each worker opens the work once, with a client to its own endpoint when the work uses a model; the
    requests it makes are added to the stage's meter, so the summary and the refusal rule see them."""

    def __init__(self, settings: RaySettings, backend_cfg: BackendConfig):
        self.settings, self.backend_cfg = settings, backend_cfg
        self.meter: Any = None
        self.report: dict[str, Any] | None = None

    def bind(self, meter: Any) -> None:
        self.meter = meter

    async def map(self, work: Any, batches: Any):
        import uuid
        from collections import deque

        ray = ensure_ray(self.settings)
        work.prepare()
        work.ray_token, work.ray_stage = uuid.uuid4().hex, getattr(self.meter, "default_operation", "stage")
        backend, endpoints, identity = _worker_backend(self.backend_cfg, self.settings)
        n = self.settings.workers or (len(self.settings.endpoints) if self.settings.endpoints else 2)
        actor_cls = ray.remote(num_cpus=self.settings.num_cpus)(_Worker)
        actors = [actor_cls.remote(backend, endpoints[w % len(endpoints)], identity, _worker_env()) for w in range(n)]
        self.report = {"workers": n, "batches": 0}
        ref = ray.put(work)
        pending: deque = deque()
        why = None
        try:
            for k, batch in enumerate(batches):
                why = self._spent()
                if why is not None:  # past the budget: no new batch; the ones on their way finish below
                    break
                pending.append(actors[k % n].run_work.remote(ref, batch))
                self.report["batches"] += 1
                if len(pending) >= 2 * n:
                    yield self._unpack(await pending.popleft())
            while pending:
                yield self._unpack(await pending.popleft())
            if why is not None:
                from ..stage.budget import BudgetReached

                self.meter.stopped = why
                raise BudgetReached(why)
        finally:
            for a in actors:
                ray.kill(a)

    def _spent(self) -> str | None:
        """Why the job's budget stops it, counting what the workers spent (their meters have no budget)."""
        budget = getattr(self.meter, "budget", None)
        return budget.reached(self.meter.tokens()) if budget is not None else None

    def _unpack(self, res: dict[str, Any]) -> Any:
        if self.meter is not None and (res["tokens"] or res["failures"]):
            self.meter.absorb(res["tokens"], res["failures"])
        return res["value"]


def run_stage_on_ray(stage: Stage, input_path: Path, output_path: Path, backend_cfg: BackendConfig,
                     settings: RaySettings, *, progress: bool = True) -> dict[str, Any]:
    """Run `stage` over `input_path` in Ray batches; write `output_path` in batch order. Returns the
    batches' summaries summed (token counts included)."""
    ray = ensure_ray(settings)
    from ray.util import ActorPool

    batches = _batches(Path(input_path), settings.batch_size)
    root = Path(output_path).parent / "ray_batches"
    root.mkdir(parents=True, exist_ok=True)
    cfg_dict = stage.cfg.model_dump(mode="json")
    # a batch's files are named by its content, so a changed input or config never reuses a stale batch
    names = [f"b{i:05d}-{_digest([stage.name, cfg_dict, b])}" for i, b in enumerate(batches)]
    done_file = lambda i: root / f"{names[i]}.jsonl"  # noqa: E731
    todo = [i for i in range(len(batches)) if not (done_file(i).is_file() and Path(f"{done_file(i)}.json").is_file())]

    backend, endpoints, identity = _worker_backend(backend_cfg, settings)
    n_workers = settings.workers or (len(settings.endpoints) if settings.endpoints else 2)
    n_workers = max(1, min(n_workers, len(todo))) if todo else 0
    env = _worker_env()

    if todo:
        actor_cls = ray.remote(num_cpus=settings.num_cpus)(_Worker)
        actors = [actor_cls.remote(backend, endpoints[w % len(endpoints)], identity, env) for w in range(n_workers)]
        pool = ActorPool(actors)
        with progress_bar(f"{stage.name} (ray x{n_workers})", total=len(batches), unit="batch",
                          enabled=progress) as bar:
            bar.advance(len(batches) - len(todo))
            jobs = pool.map_unordered(
                lambda a, i: a.run_batch.remote(stage.name, cfg_dict, batches[i], str(root / names[i]), i),
                todo)
            for res in jobs:
                i = int(res["batch"])
                _write_batch(done_file(i), res)
                bar.advance()
        for a in actors:
            ray.kill(a)

    summaries, per_endpoint, rejects = [], {}, []
    with RecordWriter(output_path) as w:
        for i in range(len(batches)):
            meta = json.loads(Path(f"{done_file(i)}.json").read_text(encoding="utf-8"))
            summaries.append(meta["summary"])
            ep = meta.get("endpoint") or "default"
            per_endpoint[ep] = per_endpoint.get(ep, 0) + 1
            rejects += meta.get("rejects", [])
            for r in read_records(done_file(i)):
                w.write(r)
    if rejects:
        with atomic_open(SideFiles(output_path).bad_lines) as fh:
            fh.writelines(line + "\n" for line in rejects)
    _remove_other_batches(root, set(names))
    summary = sum_summaries(summaries)
    summary["ray"] = {"batches": len(batches), "resumed_batches": len(batches) - len(todo),
                      "workers": n_workers, "batches_per_endpoint": per_endpoint}
    return summary


def _remove_other_batches(root: Path, keep: set[str]) -> None:
    """Batches of earlier inputs or configs are dead weight once this stage has finished."""
    import shutil

    for p in root.iterdir():
        name = p.name.split(".", 1)[0]
        if name not in keep:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _write_batch(path: Path, res: dict[str, Any]) -> None:
    with atomic_open(path) as fh:
        for line in res["lines"]:
            fh.write(line + "\n")
    write_json_atomic(f"{path}.json", {k: res[k] for k in ("summary", "endpoint", "rejects")})
