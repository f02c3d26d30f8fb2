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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from typing import TYPE_CHECKING, Annotated, Any, Iterator

from pydantic import Field

from ..errors import DataforgeError
from ..io import RejectSink, read_records, write_json_atomic
from ..progress import progress_bar
from ..quality.scores import quality_rank
from ..records import Record
from ..stage import Cli, IOConfig, SideFiles, Stage, StageContext
from .levels import DEFAULT_NAMES, UNRATED, LevelScheme, level_of, parse_edges, parse_target
from .stats import compute_stats

if TYPE_CHECKING:
    from ..llm import LLM


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


# --------------------------------------------------------------------------- scoring and selection


def quality_score(record: Record) -> float:
    """What "best" means inside a cell: the gate's quality scores on one scale, higher = better (see
    `dataforge.quality.scores`); a record without any ranks below every scored one."""
    return quality_rank(record.scores)


def _tiebreak(seed: int, rid: str) -> str:
    return hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()


def waterfill(quota: int, limits: dict[str, int]) -> dict[str, int]:
    """Split `quota` over topics as evenly as their limits allow (max-min fair); sums to min(quota, sum)."""
    give = {t: 0 for t in limits}
    remaining = min(quota, sum(limits.values()))
    items = sorted(limits.items(), key=lambda kv: (kv[1], kv[0]))
    for i, (topic, limit) in enumerate(items):
        if remaining <= 0:
            break
        fair = -(-remaining // (len(items) - i))          # ceil
        give[topic] = min(limit, fair)
        remaining -= give[topic]
    return give


def _quotas(total: int, target: dict[str, float]) -> dict[str, int]:
    """Integer quotas per level summing to `total` (largest remainder)."""
    exact = {lv: total * share for lv, share in target.items()}
    quotas = {lv: math.floor(v) for lv, v in exact.items()}
    left = total - sum(quotas.values())
    for lv in sorted(exact, key=lambda lv: (-(exact[lv] - quotas[lv]), lv))[:left]:
        quotas[lv] += 1
    return quotas


def _fill_levels(total: int, target: dict[str, float], order: list[str], by_level: dict[str, dict[str, int]],
                 cap_of: dict[str, int]) -> tuple[dict[tuple[str, str], int], Counter, bool, dict[str, int]]:
    """One try at `total` records: each level's quota water-filled over topics in `order`, under the caps.
    Returns (plan, records used per topic, every quota met, what each level got)."""
    quotas = _quotas(total, target)
    used: Counter[str] = Counter()
    plan: dict[tuple[str, str], int] = {}
    got: dict[str, int] = {}
    for lv in order:
        limits = {t: min(n, cap_of[t] - used[t]) for t, n in by_level[lv].items()}
        give = waterfill(quotas[lv], limits)
        for t, n in give.items():
            if n:
                plan[(t, lv)] = n
                used[t] += n
        got[lv] = sum(give.values())
    return plan, used, all(got[lv] >= quotas[lv] for lv in order), got


def plan_selection(
    avail: dict[tuple[str, str], int],
    target: dict[str, float],
    cap: int | None,
    size: int | None = None,
    mode: str = "exact",
) -> dict[tuple[str, str], int]:
    """How many records to keep per (topic, level) cell.

    Rated levels, mode "exact": the largest total T found whose level quotas (T x share) can all be met
    under the topic cap, each quota water-filled over topics, scarcest level first (found by shrinking
    from the supply bound, then bisecting; meeting quotas is not always monotone in T, so on rare inputs a
    slightly larger T exists: 4 of 29,801 random small cases). A level with no candidate
    at all leaves the target (the others are renormalised) rather than emptying the output. Mode "cap":
    each level keeps at most its share of all rated candidates (thin levels keep everything).
    Unrated records (no score, no depth) are outside the level target and are kept up to what the topic
    cap leaves (and `size` leaves).
    """
    topics = sorted({t for t, _ in avail})
    cap_of = {t: cap if cap is not None else sum(n for (tt, _), n in avail.items() if tt == t) for t in topics}
    supplied = {lv for (_, lv), n in avail.items() if n}
    rated = [lv for lv, share in target.items() if share > 0 and lv in supplied]
    if rated:
        norm = sum(target[lv] for lv in rated)
        target = {lv: target[lv] / norm for lv in rated}
    plan: dict[tuple[str, str], int] = {}
    used: Counter[str] = Counter()
    if mode == "cap" and rated:
        n_rated = sum(n for (_, lv), n in avail.items() if lv in target)
        quotas = _quotas(n_rated if size is None else min(size, n_rated), target)
        for lv in rated:
            limits = {t: min(avail.get((t, lv), 0), cap_of[t] - used[t]) for t in topics}
            for t, n in waterfill(quotas[lv], limits).items():
                if n:
                    plan[(t, lv)] = n
                    used[t] += n
        rated = []  # the exact search below is skipped
    by_level = {lv: {t: avail.get((t, lv), 0) for t in topics} for lv in rated}

    if rated and any(sum(v.values()) for v in by_level.values()):
        reach = {lv: sum(min(n, cap_of[t]) for t, n in by_level[lv].items()) for lv in rated}
        total = min(math.floor(reach[lv] / target[lv] + 1e-9) for lv in rated)
        if size is not None:
            total = min(total, size)
        order = sorted(rated, key=lambda lv: (reach[lv] / target[lv], lv))      # scarcest first
        best = _fill_levels(total, target, order, by_level, cap_of)
        if not best[2]:
            # Shrink fast with the bound what each level got allows, then bisect back up between that total
            # (met) and the last unmet one: a smaller total leaves later levels more room under the caps, so
            # the bound alone overshoots (it turned a feasible output of 2 into an empty one; a linear scan
            # instead of the bisection takes 20 s on 100k candidates).
            unmet, low = total, total
            while not best[2] and low > 0:
                unmet = low
                low = min(low - 1, min(math.floor(best[3][lv] / target[lv] + 1e-9) for lv in rated))
                best = _fill_levels(low, target, order, by_level, cap_of)
            while unmet - low > 1:
                mid = (low + unmet) // 2
                trial = _fill_levels(mid, target, order, by_level, cap_of)
                if trial[2]:
                    low, best = mid, trial
                else:
                    unmet = mid
        plan, used = best[0], best[1]

    unrated = {t: avail.get((t, UNRATED), 0) for t in topics}
    if sum(unrated.values()):
        room = {t: min(n, cap_of[t] - used[t]) for t, n in unrated.items()}
        quota = sum(room.values()) if size is None else max(0, size - sum(plan.values()))
        for t, n in waterfill(quota, room).items():
            if n:
                plan[(t, UNRATED)] = n
    return plan


# --------------------------------------------------------------------------- topics


def assign_topics(records: list[Record], cfg: BalanceConfig, *, llm: "LLM | None" = None,
                  progress: bool = True) -> tuple[list[str], dict]:
    """Topic key per record plus {key: {"label", "terms", "name", "size"}} and clustering facts."""
    if cfg.reuse_topics and records and all(r.topic for r in records):
        keys = [r.topic or "" for r in records]
        sizes = Counter(keys)
        return keys, {"topics": {k: {"label": k, "terms": [], "name": None, "size": n} for k, n in sorted(sizes.items())},
                      "method": "reused", "k": len(sizes)}
    from .cluster import cluster_embeddings
    from .labels import ctfidf_terms, name_topics, topic_key
    from ..quality.embed import get_embedder

    texts = [r.prompt_text for r in records]
    embedder = get_embedder(cfg.embedder)
    t0 = time.perf_counter()
    vectors = []
    step = 2048
    with progress_bar("embed", total=len(texts), enabled=progress) as bar:
        for i in range(0, len(texts), step):
            vectors.append(embedder.encode(texts[i:i + step]))
            bar.advance(len(texts[i:i + step]))
    import numpy as np

    x = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    t_embed = time.perf_counter() - t0
    res = cluster_embeddings(x, cfg.method, cfg.k, k_min=cfg.k_min, k_max=cfg.k_max,
                             min_cluster_size=cfg.min_cluster_size, seed=cfg.seed)
    terms = ctfidf_terms(texts, res.labels)
    names: dict[int, str | None] = {}
    if cfg.name_topics:
        if llm is None:
            raise DataforgeError("--name-topics needs a model (backend options or DATAFORGE_* environment)")
        examples = {c: [texts[i] for i in np.flatnonzero(res.labels == c)[:4]] for c in range(res.k)}
        names = name_topics(llm, terms, examples)
    key_of = {c: topic_key(c, terms.get(c, []), names.get(c)) for c in range(res.k)}
    sizes = res.sizes
    info = {
        "method": res.method, "k": res.k, "noise": res.noise, "embed_s": round(t_embed, 2),
        "cluster_s": round(res.seconds, 2),
        "silhouette_by_k": {str(k): round(v, 4) for k, v in res.silhouette_by_k.items()},
        "topics": {key_of[c]: {"label": ", ".join(terms.get(c, [])) or key_of[c], "terms": terms.get(c, []),
                               "name": names.get(c), "size": sizes[c]} for c in range(res.k)},
    }
    return [key_of[int(c)] for c in res.labels], info


# --------------------------------------------------------------------------- the stage


def _read_upstream(input_path: Path, cfg: BalanceConfig) -> list[Record]:
    """Records earlier stages set aside (not candidates): they count in the acceptance-rate stats only.

    The gate writes accepted records to its output and the rest beside it; without these files the stats
    would only ever see balance's own drops. Records held for review count as not kept (stage `review`).
    """
    paths = [Path(p) for p in cfg.upstream]
    for p in paths:
        if not p.exists():
            raise DataforgeError(f"{p}: no such file (--upstream)")
    if cfg.auto_upstream:
        beside = SideFiles(input_path)
        paths += [p for p in (beside.rejected, beside.review) if p.is_file()]
    out: list[Record] = []
    for p in paths:
        if p.stat().st_size:  # an empty side file (a stage that set nothing aside) holds no records
            out.extend(read_records(p, "auto", rejects=RejectSink(None)))
    return out


class BalanceStage(Stage[BalanceConfig]):
    """Cluster topics, bin complexity levels, keep the best records per (topic, level) cell to meet the
    level target and the topic cap. Dropped records go to <out>.rejected.jsonl with reason
    balance:<topic>/<level>; acceptance rates per topic and level go to <out>.stats.json (feed it to
    `dataforge evolve --steer`)."""

    name = "balance"
    Config = BalanceConfig
    journaled = False  # embeddings are cached by text hash, so a re-run is quick and gives the same result

    def __init__(self, cfg: BalanceConfig):
        super().__init__(cfg)
        self.scheme = cfg.scheme()
        self.target = parse_target(cfg.levels_target, self.scheme.names)
        if cfg.keep_dropped and cfg.out_format not in ("record", "parquet"):
            raise DataforgeError(f"--keep-dropped needs --to record or parquet: {cfg.out_format} has no "
                                 "status/reasons to tell dropped records from kept ones")
        self.records: list[Record] = []

    def needs_llm(self) -> bool:
        return self.cfg.name_topics

    def side_outputs(self, side: SideFiles) -> dict[str, Path]:
        if self.cfg.keep_dropped:
            return {}
        return {"rejected": Path(self.cfg.rejected_path) if self.cfg.rejected_path else side.rejected}

    def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        self.records = list(records)

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        cfg, records, target = self.cfg, self.records, self.target
        ids = Counter(r.id for r in records)
        upstream = _read_upstream(ctx.input, cfg)

        everything = records + upstream
        all_topics, topic_info = assign_topics(everything, cfg, llm=ctx.llm if cfg.name_topics else None,
                                               progress=ctx.progress)
        all_levels = [level_of(r, self.scheme) for r in everything]
        topics, levels = all_topics[: len(records)], all_levels[: len(records)]

        cells: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            if r.status != "rejected":
                cells[(topics[i], levels[i])].append(i)
        for members in cells.values():
            members.sort(key=lambda i: (-quality_score(records[i]), _tiebreak(cfg.seed, records[i].id), i))
        avail = {cell: len(m) for cell, m in cells.items()}
        n_candidates = sum(avail.values())
        n_topics = len({t for t, _ in avail}) or 1
        cap = cfg.topic_cap
        if cap is None and cfg.topic_cap_ratio:
            cap = max(1, math.ceil(cfg.topic_cap_ratio * n_candidates / n_topics))
        plan = plan_selection(avail, target, cap, cfg.size, cfg.level_mode)
        keep = {i for cell, members in cells.items() for i in members[: plan.get(cell, 0)]}

        final: list[Record] = []
        for i, r in enumerate(records):
            r = r.model_copy(update={"topic": topics[i]})
            if r.status != "rejected" and i not in keep:
                r = r.with_status("rejected", f"balance:{topics[i]}/{levels[i]}")
            final.append(r)
        with ctx.bar("write", total=len(final)) as bar:
            for r in final:
                ctx.out.write(r)
                bar.advance()

        labels = {k: v["label"] for k, v in topic_info["topics"].items()}
        names = {k: v.get("name") for k, v in topic_info["topics"].items()}
        held = [r if r.status != "review" else r.with_status("rejected", "review:held by the gate") for r in upstream]
        stats = compute_stats(zip(final + held, all_topics, all_levels), topic_labels=labels, topic_names=names,
                              level_target=target)
        stats["balance"] = {
            "topic_cap": cap, "size": cfg.size, "levels": list(self.scheme.names),
            "plan": [{"topic": t, "level": lv, "available": avail[(t, lv)], "kept": plan.get((t, lv), 0)}
                     for (t, lv) in sorted(avail)],
            "clustering": {k: v for k, v in topic_info.items() if k != "topics"},
        }
        stats_path = Path(cfg.stats_path) if cfg.stats_path else ctx.side.stats
        write_json_atomic(stats_path, stats)
        ctx.files["stats"] = str(stats_path)

        reasons = Counter(r.reasons[-1].split(":", 1)[0] if r.reasons else "unknown"
                          for r in final if r.status == "rejected")
        kept_levels = Counter(levels[i] for i in keep)
        return {
            "duplicate_ids": sum(n - 1 for n in ids.values() if n > 1),
            "candidates": n_candidates, "kept": len(keep),
            "dropped_by_balance": n_candidates - len(keep),
            "arrived_rejected": len(records) - n_candidates,
            "upstream_counted": len(upstream),
            "by_reason": dict(reasons),
            "topics": topic_info.get("k"), "topic_cap": cap,
            "kept_by_level": {lv: kept_levels.get(lv, 0) for lv in [*self.scheme.names, UNRATED]
                              if lv in kept_levels or lv in target},
            "level_target": {k: round(v, 4) for k, v in target.items()},
            "thin_topics": stats["thin_topics"], "thin_levels": stats["thin_levels"],
        }


def run_balance(input_path, output_path, cfg: BalanceConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(BalanceStage, input_path, output_path, cfg, **kwargs)
