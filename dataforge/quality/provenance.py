"""What was checked, said on every record and in every summary: a record accepted on embedding and
regex checks alone must not look like one a capable judge read.

`meta.gate` on each gated record::

    {"judged_by": "model:gpt-4o" | "embedding" | "heuristics",
     "signals": ["arithmetic", "consistency", ...],   # correctness signals that ran on it
     "unjudged": ["alignment", ...]}                  # model checks that gave no verdict

`correctness_summary` counts them over a run, and says plainly when correctness was not checked.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

SIGNALS = ("reference_answer", "arithmetic", "execution", "consistency")


def judged_by(scores: dict[str, float], judge_name: str | None) -> str:
    """`model:<name>` when a model judge gave an alignment verdict, `embedding` when the embedding
    alignment checks stood in, `heuristics` when neither applied (e.g. a one-word answer without a judge)."""
    if judge_name and "alignment" in scores:
        return f"model:{judge_name}"
    if "alignment_emb" in scores or "alignment_local" in scores:
        return "embedding"
    return "heuristics"


def gate_meta(scores: dict[str, float], judge_name: str | None, unjudged: Iterable[str] = ()) -> dict[str, Any]:
    return {"judged_by": judged_by(scores, judge_name), "signals": [s for s in SIGNALS if s in scores],
            "unjudged": list(unjudged)}


def correctness_summary(records: Iterable[Any]) -> dict[str, Any]:
    """Per run: who judged the accepted records, unjudged counts per check, and a plain note when
    accepted records rest on embedding and heuristic checks alone."""
    accepted, judged, unjudged, signals = 0, Counter(), Counter(), Counter()
    for r in records:
        gate = (r.meta or {}).get("gate") or {}
        unjudged.update(gate.get("unjudged") or [])
        if r.status != "accepted":
            continue
        accepted += 1
        judged[gate.get("judged_by") or "unknown"] += 1
        signals.update(gate.get("signals") or [])
    by_model = sum(n for k, n in judged.items() if k.startswith("model:"))
    without = accepted - by_model
    note = None
    if without:
        note = (f"correctness was not checked by a model judge for {without:,} of {accepted:,} accepted records: "
                "they rest on embedding and heuristic checks alone"
                + (" (plus the correctness signals that applied to them)" if signals else "")
                + "; use a capable judge (--judge-model / --base-url) to check them")
    return {"accepted_judged_by": dict(judged.most_common()), "accepted_without_model_judge": without,
            "unjudged": dict(unjudged.most_common()), "signals_on_accepted": dict(signals.most_common()),
            "note": note}
