"""How `pairs` ranks the answers to one instruction and decides whether a pair is clear.

Every candidate has gone through the gate's checks (`Checker.score`: structure, refusal, truncation,
constraints, correctness signals, coherence and alignment, the judges where a model judges) and the gate's
decision (`rules.decide`). Its *score* is the share of the configured checks that ran on it and passed;
a check that did not run (an unjudged judge, a signal that did not apply) is left out, never counted as
passed. Candidates rank by gate status first (accepted, review, rejected), then score, then the
alignment figure the run has (the judge's, else the embedding rank, else coherence).

A *verifiable* pair needs constraints attached to the record: the chosen answer meets every one of them
(and is not rejected by the gate), the rejected answer fails at least one. Otherwise a *scored* pair needs
a clear gap: a better gate status, or a score at least `min_gap` higher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_RANK = {"accepted": 0, "review": 1, "rejected": 2}
_TIEBREAK = ("alignment", "alignment_emb", "coherence")


@dataclass
class Candidate:
    """One sampled answer and what the gate found."""

    text: str
    temperature: float | None
    truncated: bool = False
    status: str = "pending"
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    constraint_failures: list[str] = field(default_factory=list)  # attached constraints it fails, "type(detail)"

    def key(self) -> tuple[Any, ...]:
        """Smaller is better."""
        tie = next((self.scores[k] for k in _TIEBREAK if k in self.scores), 0.0)
        return _RANK.get(self.status, 3), -self.score, -tie

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def gate_score(scores: dict[str, float], rules: Any) -> float:
    """Share of the configured checks with a score that pass (1.0 when none ran)."""
    ran = [name for name, rule in rules.checks.items() if name in scores and (rule.min is not None or rule.max is not None)]
    if not ran:
        return 1.0
    failing = {name for name, _ in rules.failures(scores)}
    return round(sum(1 for name in ran if name not in failing) / len(ran), 4)


def choose_pair(cands: list[Candidate], has_constraints: bool, min_gap: float, verifiable_only: bool
                ) -> tuple[Candidate, Candidate, str, str] | str:
    """(chosen, rejected, kind, reason), or why there is no pair."""
    distinct = {c.text.strip() for c in cands}
    if len(cands) < 2:
        return "too_few_answers"
    if len(distinct) < 2:
        return "answers_identical"
    if has_constraints:
        meets = [c for c in cands if not c.constraint_failures and c.status != "rejected"]
        fails = [c for c in cands if c.constraint_failures]
        if meets and fails:
            chosen, rejected = min(meets, key=Candidate.key), max(fails, key=Candidate.key)
            reason = (f"chosen meets every attached constraint; rejected fails "
                      f"{'; '.join(rejected.constraint_failures)}")
            return chosen, rejected, "verifiable", reason
        if verifiable_only:
            return "no_constraint_split" if meets or fails else "no_acceptable_answer"
    ranked = sorted(cands, key=Candidate.key)
    chosen, rejected = ranked[0], ranked[-1]
    if chosen.status == "rejected":
        return "no_acceptable_answer"
    if chosen.text.strip() == rejected.text.strip():
        return "answers_identical"
    better_status = _RANK[chosen.status] < _RANK.get(rejected.status, 3)
    if not better_status and chosen.score - rejected.score < min_gap:
        return "no_clear_gap"
    why = "; ".join(rejected.reasons[:3]) or "lower score"
    reason = (f"chosen {chosen.status} (score {chosen.score:.2f}), rejected {rejected.status} "
              f"(score {rejected.score:.2f}): {why}")
    return chosen, rejected, "scored", reason
