"""Constraints on the response as a whole: repeat the request before answering, give two different
answers separated by `******`, or answer with one of a fixed set of verdicts."""

from __future__ import annotations

import random
import re

from . import text as T
from .base import ConstraintType, pick_form, register

SEPARATOR = "******"


def _squash(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- repeat the request first

_REPEAT_TEMPLATES = (
    "Before you answer, copy out the request above word for word, exactly as written and without "
    "this sentence, and only then give your answer.",
    "Start by restating the task above verbatim (leave out this instruction itself; no words before it), "
    "then write your response.",
    "Echo the request above unchanged as the opening of your reply, not including this sentence, and follow "
    "it with your answer.",
)


def _repeat_fits(instruction: str | None) -> bool:
    return bool(instruction) and T.word_count(instruction or "") <= 80 and "\n" not in (instruction or "").strip()


def _repeat_check(p: dict, response: str) -> tuple[bool, str]:
    request = _squash(str(p["request"])).rstrip(" .:;")
    if not request:
        raise ValueError("the request to repeat is empty")
    got = _squash(response)
    if not got.startswith(request):
        return False, f"does not open with the request; starts {got[:40]!r}"
    rest = got[len(request):].lstrip(" .:;!?\"'")
    if not T.words(rest):
        return False, "repeats the request but gives no answer after it"
    return True, "opens with the request, then answers"


register(ConstraintType(
    "repeat_prompt", "the response opens with the request repeated verbatim, then answers it",
    lambda rng, ins: {"request": (ins or "").strip()},
    lambda p: pick_form(_REPEAT_TEMPLATES, p), _repeat_check, forms=len(_REPEAT_TEMPLATES), weight=0.4,
    applies=_repeat_fits,
    conflicts=frozenset({"start_with", "json_format", "quotation", "title", "lowercase", "uppercase",
                         "two_responses", "answer_choice", "first_word", "word_count", "sentence_count",
                         "capital_word_frequency", "letter_frequency", "exclude_keywords", "no_commas"})))

# ---------------------------------------------------------------- two responses

_TWO_TEMPLATES = (
    "Write two different answers, separated only by a line of six asterisks: ******",
    "Offer two alternative responses. Put ****** (six asterisks) between them and nowhere else.",
    "Give two distinct versions of your reply, and divide them with ****** and nothing else.",
)


def _two_check(p: dict, response: str) -> tuple[bool, str]:
    parts = response.split(SEPARATOR)
    if len(parts) != 2:
        return False, f"{len(parts) - 1} '******' separators, wanted exactly one"
    a, b = (_squash(x).strip("*").strip() for x in parts)
    if not T.words(a) or not T.words(b):
        return False, "one of the two responses is empty"
    if a.lower() == b.lower():
        return False, "the two responses are the same"
    return True, "two different responses"


register(ConstraintType(
    "two_responses", "two different responses separated by ******", lambda rng, ins: {},
    lambda p: pick_form(_TWO_TEMPLATES, p), _two_check, forms=len(_TWO_TEMPLATES), weight=0.4,
    conflicts=frozenset({"json_format", "quotation", "start_with", "end_with", "postscript", "title",
                         "paragraph_count", "paragraph_dividers", "sections", "bullet_count", "word_count",
                         "sentence_count", "highlights", "answer_choice", "repeat_prompt", "first_word"})))

# ---------------------------------------------------------------- a fixed verdict

OPTION_SETS = (
    ("Short answer: yes.", "Short answer: no.", "Short answer: it depends."),
    ("Yes, definitely.", "No, not at all.", "It is unclear."),
    ("Verdict: yes", "Verdict: no", "Verdict: uncertain"),
    ("True", "False"),
)
_CHOICE_TEMPLATES = (
    "State your verdict with exactly one of these phrases, word for word: {opts}",
    "Your reply has to contain one (and only one) of the following: {opts}",
    "Pick one option from this list and write it exactly as given: {opts}",
)
_YES_NO = re.compile(r"^\s*(?:is|are|was|were|do|does|did|can|could|should|would|will|has|have|had|may|might|"
                     r"must|shall)\b", re.I)


def _choice_fits(instruction: str | None) -> bool:
    """A verdict answers a yes/no question: one that starts like one and ends with '?'."""
    text = (instruction or "").strip()
    last = re.split(r"(?<=[.!?])\s+", text)[-1] if text else ""
    return last.endswith("?") and bool(_YES_NO.match(last))


def _choice_check(p: dict, response: str) -> tuple[bool, str]:
    options = [str(o) for o in p["options"]]
    if len(options) < 2:
        raise ValueError("a choice needs at least two options")
    used = [o for o in options if T.count_phrase(response, o)]
    if len(used) == 1:
        return True, f"answered {used[0]!r}"
    if not used:
        return False, f"none of {options} appears"
    return False, f"several options appear: {used}"


register(ConstraintType(
    "answer_choice", "exactly one of a fixed set of answer phrases appears",
    lambda rng, ins: {"options": list(rng.choice(OPTION_SETS))},
    lambda p: pick_form(_CHOICE_TEMPLATES, p).format(opts=", ".join(f'"{o}"' for o in p["options"]))
    + ("" if str(p["options"][-1])[-1:] in ".!?" else "."),
    _choice_check, forms=len(_CHOICE_TEMPLATES), weight=0.3, applies=_choice_fits,
    conflicts=frozenset({"word_count", "sentence_count", "paragraph_count", "paragraph_dividers", "bullet_count",
                         "sections", "include_keywords", "keyword_frequency", "json_format", "title", "postscript",
                         "highlights", "placeholders", "quotation", "start_with", "end_with", "lowercase",
                         "uppercase", "letter_frequency", "capital_word_frequency", "two_responses",
                         "repeat_prompt", "first_word", "response_language"})))
