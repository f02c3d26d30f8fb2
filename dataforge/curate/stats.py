"""Acceptance-rate tracking per topic and complexity level, across every stage that rejected records.

A record's fate is read from its status and reasons: a rejected record was dropped by the stage named
in the prefix of its last reason (``gate:coherence``, ``dedup:near``, ``balance:<cell>``). From that we
know, per topic and per level, how much the generators produced, how much survived the gate and
dedup (the *supply*) and how much was kept in the end. Thin topics and levels are where the supply is
short or the rejection rate is high: the generators are told to aim there (`dataforge evolve --steer`).

The stats file (``<out>.stats.json``, format ``dataforge.curate.stats/1``)::

    {"format": "dataforge.curate.stats/1", "total": 1200,
     "by_status": {"accepted": 800, "rejected": 400}, "rejected_by_stage": {"gate": 150, "balance": 250},
     "acceptance_rate": 0.667, "supply_rate": 0.875, "level_target": {"low": 0.33, ...},
     "topics": {"03_recipe_bake_flour": {"label": "recipe, bake, flour", "name": null,
                "total": 90, "supply": 80, "kept": 60, "acceptance_rate": 0.667, "supply_rate": 0.889,
                "by_status": {...}, "rejected_by_stage": {...}, "by_level": {"low": 30, ...}}, ...},
     "levels": {"low": {"total": ..., "supply": ..., "kept": ..., "supply_share": 0.5,
                "target_share": 0.333, ...}, ...},
     "cells": [{"topic": ..., "level": ..., "total": ..., "supply": ..., "kept": ...}, ...],
     "thin_topics": ["07_poem_rhyme_verse"], "thin_levels": ["high"],
     "thin_why": {"07_poem_rhyme_verse": "supply 4 < 0.5 x mean 31.0", "high": "..."},
     "topic_examples": {"07_poem_rhyme_verse": ["Write a limerick about ...", ...]}}

`acceptance_rate` = kept / total (kept = not rejected); `supply_rate` = supply / total where supply
excludes only balance's own drops, so it measures the generators and the gate, not the balancer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from ..records import STATUSES, Record
from .levels import UNRATED

FORMAT = "dataforge.curate.stats/1"
BALANCE_STAGE = "balance"


def rejecting_stage(record: Record) -> str | None:
    """The stage that rejected the record (prefix of its last reason), None if not rejected."""
    if record.status != "rejected":
        return None
    if not record.reasons:
        return "unknown"
    return record.reasons[-1].split(":", 1)[0] or "unknown"


@dataclass
class _Tally:
    total: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_stage: Counter = field(default_factory=Counter)
    by_level: Counter = field(default_factory=Counter)

    def add(self, record: Record, level: str) -> None:
        self.total += 1
        self.by_status[record.status] += 1
        stage = rejecting_stage(record)
        if stage:
            self.by_stage[stage] += 1
        if record.status != "rejected":
            self.by_level[level] += 1

    @property
    def kept(self) -> int:
        return self.total - self.by_status["rejected"]

    @property
    def supply(self) -> int:
        return self.kept + self.by_stage[BALANCE_STAGE]

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "supply": self.supply,
            "kept": self.kept,
            "acceptance_rate": _rate(self.kept, self.total),
            "supply_rate": _rate(self.supply, self.total),
            "by_status": {s: self.by_status[s] for s in STATUSES if self.by_status[s]},
            "rejected_by_stage": dict(sorted(self.by_stage.items())),
            "kept_by_level": dict(sorted(self.by_level.items())),
        }


def _rate(num: int, den: int) -> float:
    return round(num / den, 4) if den else 0.0


def compute_stats(
    items: Iterable[tuple[Record, str, str]],
    *,
    topic_labels: dict[str, str] | None = None,
    topic_names: dict[str, str | None] | None = None,
    level_target: dict[str, float] | None = None,
    thin_ratio: float = 0.5,
    level_thin_ratio: float = 0.8,
    n_examples: int = 3,
) -> dict:
    """Stats over `(record, topic, level)` triples: every record of the run, kept and dropped alike.

    A topic is thin when its supply is below `thin_ratio` x the mean supply per topic, or its supply rate
    is below `thin_ratio` x the overall one. A level is thin when its share of the rated supply is below
    `level_thin_ratio` x its target share, or its supply rate is below `thin_ratio` x the overall one.
    """
    overall = _Tally()
    topics: dict[str, _Tally] = defaultdict(_Tally)
    levels: dict[str, _Tally] = defaultdict(_Tally)
    cells: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    examples: dict[str, list[str]] = defaultdict(list)
    for record, topic, level in items:
        overall.add(record, level)
        topics[topic].add(record, level)
        levels[level].add(record, level)
        cells[(topic, level)].add(record, level)
        if record.status != "rejected" and len(examples[topic]) < max(n_examples, 0) * 4:
            examples[topic].append(record.instruction)

    rated = [lv for lv in levels if lv != UNRATED]
    if level_target is None:
        level_target = {lv: 1.0 / len(rated) for lv in rated} if rated else {}
    rated_supply = sum(levels[lv].supply for lv in rated)
    overall_supply_rate = overall.supply / overall.total if overall.total else 0.0

    thin_why: dict[str, str] = {}
    mean_supply = (sum(t.supply for t in topics.values()) / len(topics)) if topics else 0.0
    for name, t in sorted(topics.items(), key=lambda kv: (kv[1].supply, kv[0])):
        if len(topics) > 1 and t.supply < thin_ratio * mean_supply:
            thin_why[name] = f"supply {t.supply} < {thin_ratio} x mean {mean_supply:.1f}"
        elif t.total and t.supply / t.total < thin_ratio * overall_supply_rate:
            thin_why[name] = f"supply rate {t.supply / t.total:.2f} < {thin_ratio} x overall {overall_supply_rate:.2f}"
    thin_topics = [n for n in sorted(topics, key=lambda n: (topics[n].supply, n)) if n in thin_why]

    level_rows = {}
    thin_levels = []
    for lv in sorted(set(levels) | set(level_target), key=_level_order(level_target)):
        t = levels.get(lv, _Tally())
        share = t.supply / rated_supply if rated_supply and lv != UNRATED else None
        target = level_target.get(lv)
        row = t.as_dict()
        row.update({"supply_share": round(share, 4) if share is not None else None,
                    "target_share": round(target, 4) if target is not None else None})
        level_rows[lv] = row
        if lv == UNRATED or not target or not rated_supply:   # nothing rated: no level can be judged
            continue
        if (share or 0.0) < level_thin_ratio * target:
            thin_why[lv] = f"supply share {share or 0.0:.2f} < {level_thin_ratio} x target {target:.2f}"
            thin_levels.append(lv)
        elif t.total and t.supply / t.total < thin_ratio * overall_supply_rate:
            thin_why[lv] = f"supply rate {t.supply / t.total:.2f} < {thin_ratio} x overall {overall_supply_rate:.2f}"
            thin_levels.append(lv)

    # thinnest first: lowest supply share relative to the target
    thin_levels.sort(key=lambda lv: ((level_rows[lv]["supply_share"] or 0.0) / (level_target.get(lv) or 1.0), lv))

    topic_rows = {}
    for name in sorted(topics):
        row = topics[name].as_dict()
        row = {"label": (topic_labels or {}).get(name, name), "name": (topic_names or {}).get(name), **row}
        topic_rows[name] = row

    summary = overall.as_dict()
    return {
        "format": FORMAT,
        "total": summary["total"],
        "supply": summary["supply"],
        "kept": summary["kept"],
        "by_status": summary["by_status"],
        "rejected_by_stage": summary["rejected_by_stage"],
        "acceptance_rate": summary["acceptance_rate"],
        "supply_rate": summary["supply_rate"],
        "level_target": {k: round(v, 4) for k, v in level_target.items()},
        "topics": topic_rows,
        "levels": level_rows,
        "cells": [{"topic": tp, "level": lv, **{k: v for k, v in t.as_dict().items() if k != "kept_by_level"}}
                  for (tp, lv), t in sorted(cells.items())],
        "thin_topics": thin_topics,
        "thin_levels": thin_levels,
        "thin_why": thin_why,
        "topic_examples": {tp: _spread(examples[tp], n_examples) for tp in thin_topics},
    }


def _spread(items: list[str], n: int) -> list[str]:
    """Up to n distinct, short examples (the first few of a topic are often near-duplicates)."""
    out: list[str] = []
    for text in items:
        text = text.strip()
        if text and text not in out:
            out.append(text[:400])
        if len(out) >= n:
            break
    return out


def _level_order(target: dict[str, float]):
    order = {name: i for i, name in enumerate(target)}
    return lambda lv: (lv == UNRATED, order.get(lv, len(order)), lv)
