"""Complexity levels: coarse bins a person can reason about ("low", "mid", "high").

The gate's complexity score (1-10, `record.complexity` or `scores["complexity"]`) is binned by edges;
where no score exists the evolution depth (`lineage.round`) stands in, since each in-depth evolution
round makes a task harder. Records with neither are "unrated" and take no part in the level target.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataforgeError
from ..records import Record

UNRATED = "unrated"
DEFAULT_NAMES: tuple[str, ...] = ("low", "mid", "high")


@dataclass(frozen=True)
class LevelScheme:
    """Level names and the edges that separate them (len(edges) == len(names) - 1)."""

    names: tuple[str, ...] = DEFAULT_NAMES
    score_edges: tuple[float, ...] = (4.0, 7.0)   # complexity 1-10: <4 low, 4..<7 mid, >=7 high
    depth_edges: tuple[float, ...] = (1.0, 2.0)   # evolution round: 0 low, 1 mid, >=2 high

    def __post_init__(self) -> None:
        for what, edges in (("score", self.score_edges), ("depth", self.depth_edges)):
            if len(edges) != len(self.names) - 1:
                raise DataforgeError(f"{what} level edges {list(edges)} need exactly {len(self.names) - 1} "
                                     f"values for levels {list(self.names)}")
            if list(edges) != sorted(edges):
                raise DataforgeError(f"{what} level edges {list(edges)} must be increasing")

    def bin(self, value: float, edges: tuple[float, ...]) -> str:
        for name, edge in zip(self.names, edges):
            if value < edge:
                return name
        return self.names[-1]


def complexity_of(record: Record) -> float | None:
    """The gate's complexity score, wherever the gate put it."""
    if record.complexity is not None:
        return float(record.complexity)
    value = record.scores.get("complexity")
    return float(value) if value is not None else None


def level_of(record: Record, scheme: LevelScheme = LevelScheme()) -> str:
    score = complexity_of(record)
    if score is not None:
        return scheme.bin(score, scheme.score_edges)
    if record.lineage.round is not None:
        return scheme.bin(float(record.lineage.round), scheme.depth_edges)
    return UNRATED


def parse_edges(text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    if not text:
        return default
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise DataforgeError(f"level edges {text!r}: expected comma-separated numbers, e.g. 4,7") from exc


def parse_target(text: str | None, names: tuple[str, ...]) -> dict[str, float]:
    """`low=0.2,mid=0.5,high=0.3` -> normalised shares; empty -> uniform over `names`."""
    if not text or text.strip() in ("", "uniform"):
        return {n: 1.0 / len(names) for n in names}
    shares: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise DataforgeError(f"--levels-target {text!r}: each item must be LEVEL=SHARE with LEVEL in "
                                 f"{', '.join(names)}")
        try:
            shares[name] = float(value)
        except ValueError as exc:
            raise DataforgeError(f"--levels-target {text!r}: {value!r} is not a number") from exc
        if shares[name] < 0:
            raise DataforgeError(f"--levels-target {text!r}: shares must be >= 0")
    total = sum(shares.values())
    if total <= 0:
        raise DataforgeError(f"--levels-target {text!r}: shares must add up to more than 0")
    return {n: shares.get(n, 0.0) / total for n in names}
