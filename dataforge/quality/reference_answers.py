"""Reference answers, where the data carries them: does the response end on the answer the data says is right?

Where a reference comes from (the first that applies):
- ``meta.reference_answer`` (any reader or user can set it: a number or a label);
- ``meta.labels``, the label set of a Self-Instruct classification task (the response must be one of them);
- the record as it arrived, when the gate changes the response (Self-Refine): a GSM8K-style ``#### N``
  or a classification instance's label in the original output is the reference for every rewrite, so a
  refinement can never "fix" a correct answer into a wrong one.

Score ``reference_answer``: 1 when the final answer matches, 0 when it differs or is missing; no score
(the check did not run) for records without a reference.
"""

from __future__ import annotations

from typing import Any

from ..records import Record
from .answers import Answer, canonical_label, canonical_number, final_answer


def reference_of(r: Record) -> list[Answer] | None:
    """The acceptable final answers for `r`, or None when the data carries none."""
    ref: Any = r.meta.get("reference_answer")
    if ref is not None and str(ref).strip():
        num = canonical_number(str(ref).strip())
        return [Answer("number", num)] if num is not None else [Answer("label", canonical_label(str(ref)))]
    labels = r.meta.get("labels")
    if isinstance(labels, list) and labels:
        return [Answer("label", canonical_label(str(x))) for x in labels if str(x).strip()]
    if r.meta.get("is_classification") and r.output.strip():
        a = final_answer(r.output)
        return [a] if a is not None and a.kind == "label" else None
    if "####" in r.output:
        a = final_answer(r.output)
        return [a] if a is not None else None
    return None


def check_reference(r: Record, output: str) -> tuple[float, str | None] | None:
    """(score, detail) for `output` against the reference of `r` (the record as it arrived), or None."""
    refs = reference_of(r)
    if not refs:
        return None
    got = final_answer(output, short_words=12 if refs[0].kind == "label" else 4)
    if got is not None and any(got.kind == ref.kind and got.value == ref.value for ref in refs):
        return 1.0, None
    want = " | ".join(a.value for a in refs[:5])
    return 0.0, f"answer {got.value if got else 'missing'} != reference {want}"
