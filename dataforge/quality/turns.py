"""The gate on conversations: every later answer is checked like a record's answer, and the worst one
decides with the first exchange's verdict.

Answer k (k >= 2; the record's own output is answer 1) is checked as a stand-in record: the user's
follow-up is its instruction, the previous answer its input (the context a judge and the embedding checks
need to see what "that step" refers to), the follow-up's attached constraints its constraints, and
``meta.converse.truncated_turns`` its finish reason. The answer checks run on it (structure, refusal,
truncation, constraints, correctness signals, coherence and alignment, the judges); complexity and the
reference similarity are about the task, so they stay with the first exchange, and Self-Refine rewrites
only the first answer. A failing later answer adds its reasons with the answer number
(``truncation:turn 3:dangling_word``) and its scores land on that turn (`Turn.scores`).
"""

from __future__ import annotations

from typing import Any

from ..records import Lineage, Record
from .rules import GateRules, decide, explained, worse

TASK_CHECKS = ("complexity", "complexity_judge", "reference")  # judged once, on the first exchange


def turn_records(r: Record) -> list[tuple[int, Record]]:
    """(answer number, stand-in record) for each answer after the first."""
    out = []
    previous = r.output
    truncated = set((r.meta.get("converse") or {}).get("truncated_turns") or [])
    for n in range(0, len(r.turns), 2):
        user, answer = r.turns[n], r.turns[n + 1]
        k = n // 2 + 2
        meta: dict[str, Any] = {k_: r.meta[k_] for k_ in ("source",) if k_ in r.meta}
        if user.constraints:
            meta["constraints"] = user.constraints
        if k in truncated:
            meta["finish_reason"] = "length"
        out.append((k, Record(instruction=user.content, input=previous, output=answer.content, task=r.task,
                              meta=meta, lineage=Lineage(round=r.lineage.round))))
        previous = answer.content
    return out


def _at_turn(reasons: list[str], k: int) -> list[str]:
    """"truncation:dangling_word" -> "truncation:turn 3:dangling_word" (the check stays the reason's key)."""
    out = []
    for x in reasons:
        name, _, rest = x.partition(":")
        out.append(f"{name}:turn {k}" + (f":{rest}" if rest else ""))
    return out


async def judge_turns(checker: Any, rules: GateRules, decided: list[tuple[int, Record]]) -> list[tuple[int, Record]]:
    """`decided` with every conversation's later answers checked: status at least as bad as its worst
    answer, the reasons of failing answers added with their number, each answer's scores on its turn."""
    jobs = [(pos, k, proxy) for pos, (_, r) in enumerate(decided) if r.turns and r.status != "rejected"
            for k, proxy in turn_records(r)]
    if not jobs:
        return decided
    scored = await checker.score([proxy for _, _, proxy in jobs], judge_complexity=False)
    out = list(decided)
    for (pos, k, _), sc in zip(jobs, scored):
        i, r = out[pos]
        scores = {name: v for name, v in sc.scores.items() if name not in TASK_CHECKS}
        status, reasons = decide(scores, rules, [(f"{c}:unjudged", "review") for c in sc.unjudged])
        turns = list(r.turns)
        turns[2 * (k - 2) + 1] = turns[2 * (k - 2) + 1].model_copy(update={"scores": scores})
        meta = r.meta
        if sc.domains:
            meta = {**meta, "domains": sorted({*(meta.get("domains") or []), *sc.domains})}
        out[pos] = (i, r.model_copy(update={"status": worse(r.status, status), "turns": turns, "meta": meta,
                                            "reasons": [*r.reasons, *_at_turn(explained(reasons, sc.details), k)]}))
    return out
