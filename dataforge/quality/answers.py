"""What a response's final answer is, when it has one: a number (GSM8K's ``#### 42``, "the answer is 42",
the last number of a short answer) or a label (a short answer such as "positive" or "Yes").

Shared by the correctness signals that need no judge: reference answers compare it with the one the
data carries, self-consistency compares it across samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GSM8K = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_STATED = re.compile(r"(?i)(?:final answer|the answer|answer)\s*(?:is|:|=)\s*\$?\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])|(?<![\w.])-?\.\d+(?![\w])")
LABEL_WORDS = 4  # an answer of at most this many words is a label ("positive", "Not spam")


@dataclass(frozen=True)
class Answer:
    kind: str  # number | label
    value: str  # canonical: "42", "0.5", "not spam"

    def __str__(self) -> str:
        return self.value


def canonical_number(text: str) -> str | None:
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else f"{value:.6g}"


def canonical_label(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def final_answer(text: str, short_words: int = LABEL_WORDS) -> Answer | None:
    """The final answer of `text`, or None when it has none that can be compared (a long free answer)."""
    text = (text or "").strip()
    if not text:
        return None
    m = _GSM8K.search(text)
    if m:
        return _num(m.group(1))
    stated = _STATED.findall(text)
    if stated:
        return _num(stated[-1])
    words = text.split()
    if len(words) <= short_words:
        nums = _NUMBER.findall(text)
        if nums and len(nums) == 1:
            return _num(nums[0])
        label = canonical_label(text)
        return Answer("label", label) if label else None
    return None


def _num(raw: str) -> Answer | None:
    value = canonical_number(raw)
    return Answer("number", value) if value is not None else None
