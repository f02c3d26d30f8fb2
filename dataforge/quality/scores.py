"""Every score the gate writes into ``record.scores``, named once: its scale and which way is better.

Ranking records by quality must not average numbers that mean different things. ``complexity`` and
``complexity_judge`` rate how hard the task is (1-10), not how good the answer is; ``contradiction`` is a
probability where higher is worse; ``reference`` (likeness to a few known-good examples) is informational.
`quality_rank` therefore uses only the quality scores on the 0-1 scale, each turned so that higher is
better. A test keeps this table equal to the names the gate's checks write and ``default_gate.yaml`` sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping


@dataclass(frozen=True)
class ScoreInfo:
    """One score: its range, and whether higher or lower is better (None: not a measure of quality)."""

    low: float
    high: float
    better: Literal["higher", "lower"] | None
    meaning: str


UNIT = (0.0, 1.0)

SCORES: dict[str, ScoreInfo] = {
    # cosine of MiniLM embeddings: -1..1 in principle; an unrelated pair sits near 0 (negative counts as 0)
    "coherence": ScoreInfo(0.0, 1.0, "higher", "cosine(instruction+input, response)"),
    "alignment": ScoreInfo(0.0, 1.0, "higher", "judge P(the response carries out the instruction)"),
    "alignment_emb": ScoreInfo(0.0, 1.0, "higher", "share of pool prompts the response matches worse than its own"),
    "alignment_local": ScoreInfo(0.0, 1.0, "higher", "the same among the 32 most similar pool prompts"),
    "format": ScoreInfo(0.0, 1.0, "higher", "share of attached and detected constraints met"),
    "truncation": ScoreInfo(0.0, 1.0, "higher", "0: looks cut off, 1: finished"),
    "structure": ScoreInfo(0.0, 1.0, "higher", "0: empty or template leftovers, 1: clean"),
    "refusal": ScoreInfo(0.0, 1.0, "higher", "0: refusal boilerplate, 1: none"),
    "contradiction": ScoreInfo(0.0, 1.0, "lower", "judge P(the response contradicts itself or its input)"),
    "reference_answer": ScoreInfo(0.0, 1.0, "higher", "1: the final answer equals the one the data carries"),
    "arithmetic": ScoreInfo(0.0, 1.0, "higher", "1: every recomputed 'a + b = c' and <<calc>> holds"),
    "execution": ScoreInfo(0.0, 1.0, "higher", "1: every ```python block ran without an error"),
    "consistency": ScoreInfo(0.0, 1.0, "higher", "share of sampled answers that agree with the response's"),
    "reference": ScoreInfo(0.0, 1.0, None, "max cosine to a known-good example (informational)"),
    "complexity": ScoreInfo(1.0, 10.0, None, "how demanding the task is, features averaged with the judge"),
    "complexity_judge": ScoreInfo(1.0, 10.0, None, "the judge's own 1-10 complexity rating"),
}

# what "better" can be computed from: quality scores that share the 0-1 scale
RANKED = tuple(name for name, s in SCORES.items() if s.better is not None and (s.low, s.high) == UNIT)


def goodness(name: str, value: float) -> float:
    """A ranked score as 0 (worst) .. 1 (best), clipped to its scale."""
    info = SCORES[name]
    v = min(max(float(value), info.low), info.high)
    return v if info.better == "higher" else info.high - v


NO_RANK = -1.0  # a record without any quality score ranks below every scored one


def quality_rank(scores: Mapping[str, float]) -> float:
    """Mean goodness of the ranked scores a record has (`NO_RANK` when it has none): what "best" means
    wherever records are compared on quality (balance keeps the best of a cell, the gate of a duplicate group)."""
    values = [goodness(n, scores[n]) for n in RANKED if scores.get(n) is not None]
    return sum(values) / len(values) if values else NO_RANK
