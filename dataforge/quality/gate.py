"""`run_filter`: the quality gate as a stage. Every record comes out accepted, review or rejected, with
its scores and reasons; nothing is dropped silently (records in == accepted + review + rejected).

Flow: a cheap first pass learns the input's answer conventions and draws the fixed alignment pool;
then batches are checked (embeddings, structure, constraints, judges), failing ones go through
Self-Refine, and each finished record is appended to a journal (``<out>.partial.jsonl``) so a killed
run resumes where it stopped. Finally duplicates are removed (best-scored survives) over the whole
journal and the three outputs are written atomically.

>>> from dataforge.quality.gate import FilterConfig, run_filter   # doctest: +SKIP
>>> run_filter("evolved.jsonl", "clean.jsonl", FilterConfig(no_llm=True))["status"]
{'accepted': 812, 'review': 95, 'rejected': 93}
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..errors import DataforgeError
from ..io import Journal, ReadStats, RecordWriter, RejectSink, read_records, rejects_path_for
from ..records import Record
from ..shard import select

_RANK = {"accepted": 0, "review": 1, "rejected": 2}


class FilterConfig(BaseModel):
    """Options of `dataforge filter` (defaults documented here and in default_gate.yaml)."""

    model_config = ConfigDict(extra="forbid")

    config: Optional[str] = Field(None, description="YAML with decision rules; merged over default_gate.yaml")
    no_llm: bool = Field(False, description="embedding and heuristic checks only: no judges, no Self-Refine")
    judges: Optional[Literal["auto", "on", "off"]] = Field(
        None, description="model judges + Self-Refine: auto = not with the embedded small model (YAML default)")
    refine_rounds: Optional[int] = Field(None, ge=0, description="Self-Refine rounds (YAML default: 2)")
    max_complexity: Optional[float] = Field(None, ge=1, le=10, description="reject above this complexity "
                                            "(YAML default: 9)")
    embedder: Optional[str] = Field(None, description="local sentence-transformers folder (default all-MiniLM-L6-v2)")
    embed_cache: Optional[str] = Field(None, description="folder of the embedding cache (default: dataforge cache)")
    reference: Optional[str] = Field(None, description="known-good examples (default: examples/seeds.jsonl)")
    no_reference: bool = Field(False, description="skip the reference comparison")
    dedup: bool = Field(True, description="remove exact, near and semantic duplicates")
    single_file: bool = Field(False, description="write every record (with its status) to the output")
    pool_size: int = Field(512, ge=16, description="prompts in the alignment_emb pool")
    batch_size: int = Field(128, ge=1, description="records checked together (embedding batch)")
    shard: Optional[str] = Field(None, description="only shard i/n of the records (by id)")
    seed: int = Field(0, description="seed for the judges' and refiner's sampling")
    in_format: str = Field("auto", description="input format")
    out_format: str = Field("record", description="format of the accepted output")
    strict: bool = Field(False, description="stop at the first bad input line")
    backend: dict[str, Any] = Field(default_factory=dict, description="BackendConfig overrides when no llm is given")


def review_path_for(out: str | Path) -> Path:
    return Path(f"{out}.review.jsonl")


def rejected_path_for(out: str | Path) -> Path:
    return Path(f"{out}.rejected.jsonl")


def journal_path_for(out: str | Path) -> Path:
    return Path(f"{out}.partial.jsonl")


def _reason_key(reason: str) -> str:
    return reason.split(":", 1)[0]


def _quality(r: Record) -> float:
    """Which record of a duplicate group survives: better status, then higher scores."""
    s = r.scores
    return (s.get("coherence", 0.0) + s.get("alignment", (s.get("alignment_emb", 0.0) + s.get("alignment_local", 0.0)) / 2) + s.get("format", 0.0)
            + s.get("truncation", 0.0) - s.get("contradiction", 0.0))


def _small_embedded(llm) -> bool:
    return getattr(llm, "backend", "") == "local" and getattr(llm, "profile", "chat") == "fewshot"


def _load_reference(cfg: FilterConfig) -> list[Record]:
    if cfg.no_reference:
        return []
    path = Path(cfg.reference) if cfg.reference else None
    if path is None:
        from ..paths import resource_dir

        try:
            path = resource_dir("examples") / "seeds.jsonl"
        except FileNotFoundError:
            return []
        if not path.is_file():
            return []
    refs = [r for r in read_records(path, rejects=RejectSink(None)) if r.output.strip()]
    if cfg.reference and not refs:
        raise DataforgeError(f"{path}: no reference records with a response")
    return refs


def run_filter(input_path: str | Path, output_path: str | Path, cfg: FilterConfig | None = None, *,
               llm=None, progress: bool = True) -> dict[str, Any]:
    """Gate every record of `input_path`; write accepted to `output_path`, review and rejected beside it."""
    from ..progress import progress_bar
    from .checks import Checker, EndingShapes, hash_pool
    from .dedup import dedup
    from .embed import get_embedder
    from .judges import Judge
    from .refine import Refiner
    from .rules import decide, load_rules

    cfg = cfg or FilterConfig()
    t0 = time.time()
    out = Path(output_path)
    for p in (out, review_path_for(out), rejected_path_for(out)):
        if p.is_dir():  # fail now, not after hours of judging
            raise DataforgeError(f"{p}: is a folder; give an output file name")
    overrides: dict[str, Any] = {}
    if cfg.refine_rounds is not None:
        overrides["refine"] = {"rounds": cfg.refine_rounds}
    if cfg.judges is not None:
        overrides["judges"] = cfg.judges
    if cfg.max_complexity is not None:
        overrides["checks"] = {"complexity": {"max": cfg.max_complexity}}
    rules = load_rules(cfg.config, overrides)

    # ---- the model: judges and refine only with a capable one
    use_model = not cfg.no_llm and rules.judges != "off"
    if use_model and llm is None:
        from ..llm import BackendConfig, make_llm

        llm = make_llm(BackendConfig.from_env(**cfg.backend))
    if use_model and rules.judges == "auto" and _small_embedded(llm):
        use_model = False
    judge = Judge(llm, seed=cfg.seed) if use_model else None

    # ---- first pass: answer conventions, alignment pool, count
    shapes = EndingShapes()
    quiet = ReadStats()

    def records(sink: RejectSink, stats: ReadStats):
        return select(read_records(input_path, cfg.in_format, rejects=sink, strict=cfg.strict, stats=stats), cfg.shard)

    total = 0

    def first_pass():
        nonlocal total
        for r in records(RejectSink(None), quiet):
            shapes.add(r)
            total += 1
            yield r

    pool = hash_pool(first_pass(), cfg.pool_size)
    shapes.finish()
    reference = _load_reference(cfg)
    embedder = get_embedder(cfg.embedder, cfg.embed_cache)
    pool += [r.prompt_text for r in reference]
    checker = Checker(rules, embedder, judge=judge, reference=reference, pool_prompts=pool, shapes=shapes)
    refiner = Refiner(llm, checker, rules, rounds=rules.refine.rounds, seed=cfg.seed) if use_model else None

    # ---- second pass: check, refine, decide, journal
    journal = Journal(journal_path_for(out))
    done = {i for i, _ in _journal_entries(journal.path)}
    resumed = len(done)
    sink = RejectSink(rejects_path_for(out))
    stats = ReadStats()

    async def process(batch: list[tuple[int, Record]]) -> list[tuple[int, Record]]:
        import asyncio

        # a record an earlier stage already rejected (e.g. evolve --keep-failed) stays rejected with its
        # own reasons: the gate neither re-judges nor "rescues" it, it only passes it through
        arrived_rejected = [(i, r) for i, r in batch if r.status == "rejected"]
        batch = [(i, r) for i, r in batch if r.status != "rejected"]
        scored = await checker.score([r for _, r in batch]) if batch else []
        if refiner is not None:
            scored = list(await asyncio.gather(*(refiner.refine(sc) for sc in scored)))
        results = list(arrived_rejected)
        for (i, _), sc in zip(batch, scored):
            status, reasons = decide(sc.scores, rules, [(f"{c}:unjudged", "review") for c in sc.unjudged])
            reasons = [f"{name}:{sc.details[name]}" if name in sc.details else reason
                       for reason, name in ((x, x.split(":", 1)[0]) for x in reasons)]
            meta = dict(sc.record.meta)
            if sc.domains:
                meta["domains"] = sc.domains
            rec = sc.record.model_copy(update={
                "scores": {**sc.record.scores, **sc.scores}, "status": status,
                "reasons": reasons, "complexity": sc.scores.get("complexity"), "meta": meta})
            results.append((i, rec))
        return results

    from ..llm import run_sync

    try:
        with progress_bar("filter", total=total, unit="rec") if progress else _nullbar() as bar:
            bar.advance(resumed)
            batch: list[tuple[int, Record]] = []

            so_far: Counter = Counter()

            def flush() -> None:
                for i, rec in run_sync(process(batch)):
                    journal.append({"i": i, "record": rec.model_dump(mode="json")})
                    so_far[rec.status] += 1
                bar.advance(len(batch))
                bar.status(f"acc {so_far['accepted']} rev {so_far['review']} rej {so_far['rejected']} (before dedup)")
                batch.clear()

            for i, r in enumerate(records(sink, stats)):
                if i in done:
                    continue
                batch.append((i, r))
                if len(batch) >= cfg.batch_size:
                    flush()
            if batch:
                flush()
            journal.sync()
    finally:
        sink.close()
        journal.close()

    # ---- dedup over everything, high-stakes routing, outputs
    entries = sorted(_journal_entries(journal.path), key=lambda x: x[0])
    recs = [r for _, r in entries]
    if len(recs) != total or (entries and entries[-1][0] != total - 1):
        raise DataforgeError(f"filter: {total} records read but {len(recs)} decided (does {journal.path} "
                             "belong to another input? delete it to start over)")
    dedup_counts = {"exact": 0, "near": 0, "semantic": 0}
    if cfg.dedup and recs:
        live = [k for k, r in enumerate(recs) if r.status != "rejected"]
        order = sorted(range(len(live)), key=lambda a: (_RANK[recs[live[a]].status], -_quality(recs[live[a]]), live[a]))
        texts = [recs[k].prompt_text for k in live]
        d = rules.dedup
        emb = embedder.encode(texts) if d.semantic.enabled and texts else None
        res = dedup(texts, order, exact=d.exact, near=d.near.threshold if d.near.enabled else None,
                    num_perm=d.near.num_perm, shingle=d.near.shingle, embeddings=emb,
                    semantic=d.semantic.threshold if d.semantic.enabled else None, block=d.semantic.block)
        dedup_counts = res.counts
        for a, (of, how) in enumerate(zip(res.duplicate_of, res.how)):
            if of is None:
                continue
            k, kept = live[a], recs[live[of]]
            recs[k] = recs[k].model_copy(update={
                "status": "rejected", "reasons": [*recs[k].reasons, f"duplicate_of:{kept.id}"],
                "meta": {**recs[k].meta, "duplicate": {"of": kept.id, "by": how}}})
    for k, r in enumerate(recs):
        if r.status == "accepted" and r.meta.get("domains"):
            recs[k] = r.with_status("review", *[f"high_stakes:{d}" for d in r.meta["domains"]])

    counts = Counter(r.status for r in recs)
    reasons = Counter(_reason_key(x) for r in recs for x in r.reasons)
    paths = {"accepted": str(out)}
    if cfg.single_file:
        with RecordWriter(out, cfg.out_format) as w:
            w.write_all(recs)
    else:
        paths.update(review=str(review_path_for(out)), rejected=str(rejected_path_for(out)))
        with RecordWriter(out, cfg.out_format) as acc, RecordWriter(review_path_for(out)) as rev, \
                RecordWriter(rejected_path_for(out)) as rej:
            for r in recs:
                {"accepted": acc, "review": rev, "rejected": rej}[r.status].write(r)
    journal.path.unlink(missing_ok=True)

    wall = time.time() - t0
    usage = getattr(llm, "usage", None) if use_model else None
    summary: dict[str, Any] = {
        "stage": "filter",
        "in": total,
        "bad_lines": stats.bad,
        "status": {s: counts.get(s, 0) for s in ("accepted", "review", "rejected")},
        "reasons": dict(reasons.most_common()),
        "dedup": dedup_counts,
        "resumed": resumed,
        "judges": "model" if judge else "embedding",
        "embedded_texts": embedder.embedded,
        "outputs": paths,
        "wall_s": round(wall, 2),
        "records_per_s": round((total - resumed) / wall, 1) if wall > 0 else None,
    }
    if refiner is not None:
        st = refiner.stats
        summary["refine"] = {"attempted": st.attempted, "improved": st.improved, "fixed": st.fixed,
                             "rounds": st.rounds, "errors": st.errors}
    if judge is not None:
        summary["judge_errors"] = judge.errors
        summary["judge_unreadable"] = judge.unreadable
    if usage is not None:
        summary["tokens"] = usage.total_tokens
        summary["requests"] = usage.requests
    if stats.bad:
        summary["outputs"]["bad_lines"] = str(rejects_path_for(out))
    return summary


def _journal_entries(path: Path) -> list[tuple[int, Record]]:
    """(input position, decided record) for every record a previous or the current run finished."""
    import json

    out = []
    if path.exists():
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    e = json.loads(raw)
                    out.append((int(e["i"]), Record.model_validate(e["record"])))
    return out


class _NullBar:
    def advance(self, n: float = 1) -> None: ...

    def status(self, text: str) -> None: ...

    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc: Any) -> None: ...


def _nullbar() -> _NullBar:
    return _NullBar()
