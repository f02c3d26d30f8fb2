"""Comparing constraint specs by meaning, and scoring a detector against labelled instructions.

Two specs say the same thing when type and parameters agree, ignoring the wording (`form`), case in
keywords and fixed phrases, the order of keywords and options, and spacing in a repeated request.
Used to merge what the parser and a model found, and to measure both on the labelled set.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

Spec = dict[str, Any]


def spec_key(spec: Spec | tuple[str, dict]) -> tuple[str, str]:
    """(type, canonical params) of a spec or a (type, params) pair."""
    t, p = (spec["type"], spec.get("params") or {}) if isinstance(spec, dict) else spec
    p = {k: v for k, v in p.items() if k != "form"}
    for k in ("keywords", "options"):
        if k in p:
            p[k] = sorted(str(x).strip().lower() for x in p[k]) if k == "keywords" else sorted(map(str, p[k]))
    for k in ("phrase", "keyword", "word", "letter", "language"):
        if k in p:
            p[k] = str(p[k]).strip().lower()
    if "request" in p:
        p["request"] = " ".join(str(p["request"]).split())
    if "n" in p:
        p["n"] = int(p["n"])
    return t, json.dumps(p, sort_keys=True, ensure_ascii=False)


@dataclass
class Score:
    """Per-type true positives, false detections and misses."""

    tp: Counter = field(default_factory=Counter)
    fp: Counter = field(default_factory=Counter)
    fn: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, gold: Iterable, found: Iterable, label: str = "") -> None:
        g, f = {spec_key(x) for x in gold}, {spec_key(x) for x in found}
        for k in g & f:
            self.tp[k[0]] += 1
        for k in f - g:
            self.fp[k[0]] += 1
            self.errors.append(f"false {label}: {k[0]} {k[1]}")
        for k in g - f:
            self.fn[k[0]] += 1
            self.errors.append(f"missed {label}: {k[0]} {k[1]}")

    def recall(self, t: str | None = None) -> float:
        tp, fn = (self.tp[t], self.fn[t]) if t else (sum(self.tp.values()), sum(self.fn.values()))
        return tp / (tp + fn) if tp + fn else 1.0

    def precision(self, t: str | None = None) -> float:
        tp, fp = (self.tp[t], self.fp[t]) if t else (sum(self.tp.values()), sum(self.fp.values()))
        return tp / (tp + fp) if tp + fp else 1.0

    def types(self) -> list[str]:
        return sorted(set(self.tp) | set(self.fp) | set(self.fn))


def load_labelled(path: str | Path, splits: Iterable[str] | None = None) -> list[dict]:
    """Rows of a labelled set: {"id", "split", "instruction", "constraints": [[type, params], ...]}."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    wanted = set(splits) if splits is not None else None
    return [r for r in rows if wanted is None or r["split"] in wanted]


def score_detector(rows: list[dict], detect: Callable[[str], list[Spec]]) -> Score:
    sc = Score()
    for r in rows:
        sc.add([tuple(c) for c in r["constraints"]], detect(r["instruction"]), r["id"])
    return sc
