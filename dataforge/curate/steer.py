"""What the generators read back from a stats file: where the corpus is thin.

`dataforge evolve --steer stats.json` aims in-breadth evolution at thin topics (new tasks in the same
domain as the examples given) and in-depth evolution at thin complexity levels.

>>> s = load_steering("final.jsonl.stats.json")          # doctest: +SKIP
>>> s.thin_topics, s.thin_levels, s.topic_examples[s.thin_topics[0]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataforgeError
from .levels import UNRATED
from .stats import FORMAT


@dataclass(frozen=True)
class Steering:
    """Thin topics (thinnest first), thin levels, and example instructions per thin topic."""

    thin_topics: list[str] = field(default_factory=list)
    thin_levels: list[str] = field(default_factory=list)
    topic_examples: dict[str, list[str]] = field(default_factory=dict)
    topic_labels: dict[str, str] = field(default_factory=dict)   # topic -> readable label ("recipe, bake, flour")
    level_names: list[str] = field(default_factory=list)         # every rated level in the stats, low to high

    @property
    def empty(self) -> bool:
        return not self.thin_topics and not self.thin_levels

    def examples_for(self, topic: str, n: int = 3) -> list[str]:
        return list(self.topic_examples.get(topic, []))[:n]

    def label_for(self, topic: str) -> str:
        return self.topic_labels.get(topic) or topic


def load_steering(path: str | os.PathLike) -> Steering:
    """Read a stats file written by `dataforge balance` (or `dataforge report --stats`)."""
    p = Path(path)
    if not p.is_file():
        raise DataforgeError(f"{p}: steering stats file not found (write one with `dataforge balance`)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataforgeError(f"{p}: not a JSON stats file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format", FORMAT).split("/")[0] != FORMAT.split("/")[0]:
        raise DataforgeError(f"{p}: not a dataforge stats file (expected format {FORMAT!r})")

    def str_list(key: str) -> list[str]:
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataforgeError(f"{p}: {key!r} must be a list of strings")
        return list(value)

    examples = data.get("topic_examples") or {}
    if not isinstance(examples, dict):
        raise DataforgeError(f"{p}: 'topic_examples' must be an object")
    topics = data.get("topics") or {}
    labels = {k: str(v.get("name") or v.get("label") or k) for k, v in topics.items() if isinstance(v, dict)}
    return Steering(
        thin_topics=str_list("thin_topics"),
        thin_levels=str_list("thin_levels"),
        topic_examples={str(k): [str(x) for x in v] for k, v in examples.items() if isinstance(v, list)},
        topic_labels=labels,
        level_names=[lv for lv in (data.get("levels") or {}) if lv != UNRATED],
    )
