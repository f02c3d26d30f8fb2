"""The shape of a verifiable constraint and the registry of known types.

A constraint type samples its parameters from a seeded RNG, words itself as a short phrase that is
appended to an instruction, and checks a response exactly. Records store the result as a plain
spec ``{"type": name, "params": {...}, "phrase": "..."}`` in ``meta["constraints"]`` so any later
stage (the quality gate) can re-check the answer without knowing how it was generated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DataforgeError

Spec = dict[str, Any]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check; `detail` says what was measured, so a rejection explains itself."""

    ok: bool
    detail: str = ""
    type: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class ConstraintType:
    """One family of verifiable constraints (e.g. word limits)."""

    name: str
    summary: str
    sample: Callable[[random.Random, str | None], dict[str, Any]]
    phrase: Callable[[dict[str, Any]], str]
    check: Callable[[dict[str, Any], str], tuple[bool, str]]
    conflicts: frozenset[str] = field(default_factory=frozenset)
    weight: float = 1.0
    # how many wordings `phrase` knows; the sampler draws one into params["form"] so attached phrases vary
    forms: int = 1
    # whether the type makes sense for an instruction (a yes/no verdict only fits a question); None: always
    applies: Callable[[str | None], bool] | None = None


CONSTRAINTS: dict[str, ConstraintType] = {}


def register(ct: ConstraintType) -> ConstraintType:
    if ct.name in CONSTRAINTS:
        raise ValueError(f"constraint type {ct.name!r} registered twice")
    CONSTRAINTS[ct.name] = ct
    return ct


def get_type(name: str) -> ConstraintType:
    try:
        return CONSTRAINTS[name]
    except KeyError:
        raise DataforgeError(f"unknown constraint type {name!r}; known: {', '.join(sorted(CONSTRAINTS))}") from None


def conflicting(a: str, b: str) -> bool:
    """Two types that cannot (or should not) both hold on one response; a type conflicts with itself."""
    return a == b or b in get_type(a).conflicts or a in get_type(b).conflicts


# relations shared by the counting constraints ("less than n" is stored as at_most n-1)
RELATIONS = ("at_most", "at_least", "exactly", "around")


def relation_words(relation: str) -> str:
    return relation.replace("_", " ")


def around_tolerance(n: int) -> int:
    """How far "around n" may stray: a fifth of n, at least one."""
    return max(1, round(n / 5))


def compare(value: int, relation: str, n: int) -> bool:
    if relation == "at_most":
        return value <= n
    if relation == "at_least":
        return value >= n
    if relation == "exactly":
        return value == n
    if relation == "around":
        return abs(value - n) <= around_tolerance(n)
    raise DataforgeError(f"unknown relation {relation!r}; use one of {', '.join(RELATIONS)}")


def pick_form(templates: tuple[str, ...], p: dict[str, Any]) -> str:
    """The wording `p["form"]` chose among `templates` (the first when the spec has none)."""
    return templates[int(p.get("form", 0)) % len(templates)]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
