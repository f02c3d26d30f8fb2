"""The balance stage: topics x complexity levels, a target level mix, a cap per topic, nothing silent.

1. every record (kept or already rejected upstream) is embedded, clustered into topics and given a level;
2. the candidates (not rejected) are placed in (topic, level) cells, each cell sorted best score first;
3. the largest output that meets the level target is chosen, each level's quota spread over topics as
   evenly as the cells allow (max-min fair) and no topic above its cap;
4. kept records go to `-o`; every candidate not kept becomes ``status=rejected`` with reason
   ``balance:<topic>/<level>`` and goes, with the records that arrived rejected, to
   ``<out>.rejected.jsonl`` (or stays in `-o` with ``keep_dropped``); a stats file records acceptance
   rates per topic and level for the generators (`dataforge evolve --steer`), counting also what earlier
   stages set aside (``<in>.rejected.jsonl`` / ``<in>.review.jsonl`` of the gate, ``--upstream`` files).

>>> run_balance("clean.jsonl", "final.jsonl", BalanceConfig(levels_target="low=0.2,mid=0.5,high=0.3"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Literal

import numpy as np
from pydantic import Field

from ..errors import DataforgeError
from ..io import RejectSink, read_records, write_json_atomic
from ..progress import Stopwatch
from ..quality.scores import quality_rank
from ..records import Record
from ..stage import Cli, IOConfig, SideFiles, Stage, StageContext
from .balance_state import BalanceState
from .levels import DEFAULT_NAMES, UNRATED, LevelScheme, level_of, parse_edges, parse_target
from .plan import plan_selection, waterfill  # noqa: F401 - part of this module's interface
from .stats import compute_stats
from .topics import assign_topics  # noqa: F401 - part of this module's interface

if TYPE_CHECKING:
    from ..llm import LLM

EMBED_BATCH = 1024  # prompts per embedding batch (a Ray task when the job has a ray block)


class BalanceConfig(IOConfig):
    """Options of `dataforge balance` (one field per CLI option)."""

    levels_target: Annotated[str | None, Cli(default_text="uniform")] = Field(
        None, description="target share per level, e.g. 'low=0.2,mid=0.5,high=0.3'")
    level_names: str = Field(",".join(DEFAULT_NAMES), description="level names, lowest first")
    level_edges: Annotated[str | None, Cli(default_text="4,7 on the 1-10 scale")] = Field(
        None, description="complexity-score edges between levels")
    depth_edges: Annotated[str | None, Cli(default_text="1,2")] = Field(
        None, description="evolution-round edges used where no score exists")
    topic_cap: int | None = Field(None, ge=1, description="at most this many records per topic")
    topic_cap_ratio: float | None = Field(2.0, ge=0, description="without --topic-cap: cap = ratio x mean "
                                                                 "candidates per topic (0 or None: no cap)")
    size: int | None = Field(None, ge=1, description="at most this many records in the output")
    level_mode: Literal["exact", "cap"] = Field(
        "exact", description="exact: the output meets the level target (the scarcest level sets the size); "
                             "cap: no level keeps more than its share of the candidates, thin levels keep all "
                             "they have (keeps more data when one level is nearly empty)")
    method: Literal["kmeans", "hdbscan"] = Field("kmeans", description="clustering algorithm")
    k: Annotated[int | None, Cli("--k", "--topics", default_text="chosen by silhouette")] = Field(
        None, ge=1, description="number of topics (kmeans)")
    k_min: int = Field(2, ge=2, description="smallest k tried when choosing k")
    k_max: int = Field(30, ge=2, description="largest k tried when choosing k")
    min_cluster_size: Annotated[int | None, Cli(default_text="n/100")] = Field(
        None, ge=2, description="HDBSCAN minimum cluster size")
    reuse_topics: bool = Field(False, description="keep the `topic` already on records instead of clustering "
                                                  "(only when every record has one)")
    name_topics: bool = Field(False, description="ask the model for a short name per topic")
    embedder: Annotated[str | None, Cli(default_text="all-MiniLM-L6-v2")] = Field(
        None, description="local sentence-transformers folder")
    keep_dropped: bool = Field(False, description="write dropped records into the output too (status=rejected)")
    stats_path: Annotated[str | None, Cli("--stats", default_text="<out>.stats.json")] = Field(
        None, description="stats file")
    upstream: list[str] = Field(default_factory=list, description="more files whose records count in the stats only "
                                                                  "(e.g. evolve's eliminated records)")
    auto_upstream: Annotated[bool, Cli("--auto-upstream/--no-upstream")] = Field(
        True, description="also count <in>.rejected.jsonl and <in>.review.jsonl (what the gate set aside) in the stats")
    rejected_path: Annotated[str | None, Cli(default_text="<out>.rejected.jsonl")] = Field(
        None, description="dropped records")
    seed: int = Field(0, description="seed for clustering and for breaking score ties")

    def scheme(self) -> LevelScheme:
        names = tuple(n.strip() for n in self.level_names.split(",") if n.strip())
        if len(names) < 1 or len(set(names)) != len(names) or UNRATED in names:
            raise DataforgeError(f"--level-names {self.level_names!r}: give distinct names (not {UNRATED!r})")
        base = LevelScheme()
        default_edges = base.score_edges if len(names) == 3 else tuple(1 + 9 * (i + 1) / len(names) for i in range(len(names) - 1))
        default_depth = base.depth_edges if len(names) == 3 else tuple(float(i + 1) for i in range(len(names) - 1))
        return LevelScheme(names, parse_edges(self.level_edges, default_edges), parse_edges(self.depth_edges, default_depth))


# --------------------------------------------------------------------------- scoring


def quality_score(record: Record) -> float:
    """What "best" means inside a cell: the gate's quality scores on one scale, higher = better (see
    `dataforge.quality.scores`); a record without any ranks below every scored one."""
    return quality_rank(record.scores)


def tiebreak(seed: int, rid: str) -> bytes:
    """The seeded order of records with equal scores (a digest of the id; 32 bytes)."""
    return hashlib.sha256(f"{seed}:{rid}".encode()).digest()


# --------------------------------------------------------------------------- the stage


def _upstream_paths(input_path: Path, cfg: BalanceConfig) -> list[Path]:
    """Files of records earlier stages set aside (not candidates): they count in the acceptance-rate
    stats only. The gate writes accepted records to its output and the rest beside it; without these
    files the stats would only ever see balance's own drops. Records held for review count as not kept."""
    paths = [Path(p) for p in cfg.upstream]
    for p in paths:
        if not p.exists():
            raise DataforgeError(f"{p}: no such file (--upstream)")
    if cfg.auto_upstream:
        beside = SideFiles(input_path)
        paths += [p for p in (beside.rejected, beside.review) if p.is_file()]
    return [p for p in paths if p.stat().st_size]  # an empty side file (nothing set aside) holds no records


def _read_upstream(paths: list[Path]) -> Iterator[Record]:
    for p in paths:
        yield from read_records(p, "auto", rejects=RejectSink(None))


class BalanceStage(Stage[BalanceConfig]):
    """Cluster topics, bin complexity levels, keep the best records per (topic, level) cell to meet the
    level target and the topic cap. Dropped records go to <out>.rejected.jsonl with reason
    balance:<topic>/<level>; acceptance rates per topic and level go to <out>.stats.json (feed it to
    `dataforge evolve --steer`).

    Two passes over the input (and the upstream files): the first keeps a compact state per record
    (`BalanceState`) and embeds the prompts (here or on Ray workers), the second writes the records with
    their topics and fates; memory stays bounded whatever the input size."""

    name = "balance"
    Config = BalanceConfig
    journaled = False  # embeddings are cached by text hash, so a re-run is quick and gives the same result
    parallel_work = True

    def __init__(self, cfg: BalanceConfig):
        super().__init__(cfg)
        self.scheme = cfg.scheme()
        self.target = parse_target(cfg.levels_target, self.scheme.names)
        if cfg.keep_dropped and cfg.out_format not in ("record", "parquet"):
            raise DataforgeError(f"--keep-dropped needs --to record or parquet: {cfg.out_format} has no "
                                 "status/reasons to tell dropped records from kept ones")
        self.state: BalanceState | None = None
        self.upstream: list[Path] = []
        self.reuse = False
        self.embed_s = 0.0
        self.clock = Stopwatch()

    def needs_llm(self) -> bool:
        return self.cfg.name_topics

    def side_outputs(self, side: SideFiles) -> dict[str, Path]:
        if self.cfg.keep_dropped:
            return {}
        return {"rejected": Path(self.cfg.rejected_path) if self.cfg.rejected_path else side.rejected}

    def _everything(self, records: Iterator[Record]) -> Iterator[tuple[Record, bool]]:
        """(record, from an upstream file): the input, then what earlier stages set aside."""
        for r in records:
            yield r, False
        for r in _read_upstream(self.upstream):
            yield r, True

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        from ..quality.embed import EmbedWork

        cfg = self.cfg
        self.upstream = _upstream_paths(ctx.input, cfg)
        self.state = state = BalanceState(ctx.side.work, self.scheme, cfg.seed)
        if cfg.reuse_topics:  # topics already on every record (input and upstream) are kept as they are
            seen = [bool(r.topic) for r, _ in self._everything(ctx.read_again())]
            self.reuse = bool(seen) and all(seen)
        if self.reuse:
            for r, up in self._everything(records):
                state.add(r, upstream=up, topic=True)
            return

        def batches() -> Iterator[list[str]]:
            texts: list[str] = []
            for r, up in self._everything(records):
                state.add(r, upstream=up)
                texts.append(r.prompt_text)
                if len(texts) >= EMBED_BATCH:
                    yield texts
                    texts = []
            if texts:
                yield texts

        t0 = time.perf_counter()
        with ctx.bar("embed", unit="rec") as bar, self.clock("embed"):
            async for vectors in ctx.map(EmbedWork(cfg.embedder), batches()):
                state.add_vectors(vectors)
                bar.advance(len(vectors))
        self.embed_s = time.perf_counter() - t0

    def _topics(self, ctx: StageContext) -> tuple[np.ndarray, list[str], dict[str, Any]]:
        """(topic index per row, topic keys, clustering info) for every row (input, then upstream)."""
        from .topics import reused_topics, topics_of_rows

        state = self.state
        if self.reuse:
            keys = list(state.topic_names)
            return np.frombuffer(state.topic, np.int64), keys, reused_topics(
                [keys[t] for t in state.topic])[1]
        if state.vectors is None:  # no record at all
            return np.zeros(0, np.int64), [], {"topics": {}, "method": self.cfg.method, "k": 0}
        texts = (r.prompt_text for r, _ in self._everything(ctx.read_again()))
        labels, key_of, info = topics_of_rows(state.vectors, texts, self.cfg,
                                              llm=ctx.llm if self.cfg.name_topics else None, embed_s=self.embed_s)
        return labels, [key_of[c] for c in range(len(key_of))], info

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        cfg, target, state = self.cfg, self.target, self.state
        with self.clock("topics"):
            topic, keys, topic_info = self._topics(ctx)
        cap = cfg.topic_cap

        def plan_of(avail: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
            nonlocal cap
            if cap is None and cfg.topic_cap_ratio:
                n_topics = len({t for t, _ in avail}) or 1
                cap = max(1, math.ceil(cfg.topic_cap_ratio * sum(avail.values()) / n_topics))
            return plan_selection(avail, target, cap, cfg.size, cfg.level_mode)

        with self.clock("choose"):
            keep, avail, plan = state.choose(topic[:state.n_input], keys, plan_of)
        n_candidates = sum(avail.values())
        reasons: Counter[str] = Counter()
        kept_levels: Counter[str] = Counter()

        def final() -> Iterator[tuple[Record, str, str]]:
            """Every record with its topic and level as the stats count it: the input's written to
            the outputs on the way (with its topic; a candidate not kept dropped), then the upstream
            files' (a record held for review counts as not kept)."""
            with ctx.bar("write", total=state.n) as bar:
                for i, (r, up) in enumerate(self._everything(ctx.read_again())):
                    t, lv = keys[int(topic[i])], state.levels[state.level[i]]
                    if not up:
                        r = r.model_copy(update={"topic": t})
                        if keep[i]:
                            kept_levels[lv] += 1
                        elif r.status != "rejected":
                            r = r.with_status("rejected", f"balance:{t}/{lv}")
                        if r.status == "rejected":
                            reasons[r.reasons[-1].split(":", 1)[0] if r.reasons else "unknown"] += 1
                        ctx.out.write(r)
                    elif r.status == "review":
                        r = r.with_status("rejected", "review:held by the gate")
                    bar.advance()
                    yield r, t, lv

        labels = {k: v["label"] for k, v in topic_info["topics"].items()}
        names = {k: v.get("name") for k, v in topic_info["topics"].items()}
        with self.clock("write"):
            stats = compute_stats(final(), topic_labels=labels, topic_names=names, level_target=target)
        stats["balance"] = {
            "topic_cap": cap, "size": cfg.size, "levels": list(self.scheme.names),
            "plan": [{"topic": t, "level": lv, "available": avail[(t, lv)], "kept": plan.get((t, lv), 0)}
                     for (t, lv) in sorted(avail)],
            "clustering": {k: v for k, v in topic_info.items() if k != "topics"},
        }
        stats_path = Path(cfg.stats_path) if cfg.stats_path else ctx.side.stats
        write_json_atomic(stats_path, stats)
        ctx.files["stats"] = str(stats_path)
        n_kept = int(keep.sum())
        return {
            "duplicate_ids": state.duplicate_ids(),
            "candidates": n_candidates, "kept": n_kept,
            "dropped_by_balance": n_candidates - n_kept,
            "arrived_rejected": state.n_input - n_candidates,
            "upstream_counted": state.n - state.n_input,
            "by_reason": dict(reasons),
            "topics": topic_info.get("k"), "topic_cap": cap,
            "kept_by_level": {lv: kept_levels.get(lv, 0) for lv in [*self.scheme.names, UNRATED]
                              if lv in kept_levels or lv in target},
            "level_target": {k: round(v, 4) for k, v in target.items()},
            "thin_topics": stats["thin_topics"], "thin_levels": stats["thin_levels"],
            "phase_s": self.clock.seconds,
        }


def run_balance(input_path, output_path, cfg: BalanceConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(BalanceStage, input_path, output_path, cfg, **kwargs)
