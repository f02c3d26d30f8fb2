"""Constraints on how the response is laid out in paragraphs: a count of paragraphs split by the
Markdown divider `***`, and a fixed first word for the n-th paragraph."""

from __future__ import annotations

import random
import re

from . import text as T
from .base import ConstraintType, compare, pick_form, plural, register, relation_words

_DIVIDER_LINE = re.compile(r"^[ \t]*\*\*\*[ \t]*$", re.M)


def divided_paragraphs(text: str) -> list[str] | None:
    """Blocks between lines that hold only `***`; None when a divider has nothing on one side
    (two dividers in a row), since that paragraph is missing rather than short."""
    blocks = [b.strip() for b in _DIVIDER_LINE.split(text)]
    if blocks and not blocks[0]:
        blocks = blocks[1:]  # a divider before the first paragraph or after the last one frames the text
    if blocks and not blocks[-1]:
        blocks = blocks[:-1]
    if any(not b for b in blocks):
        return None
    return blocks


_DIVIDER_TEMPLATES = (
    "Split your answer into {rel} {count}, putting a line with only *** between one paragraph and the next.",
    "Organise the reply as {rel} {count}; mark each break between paragraphs with a *** line.",
    "Your response needs {rel} {count}. Use a line containing just three asterisks (***) as the divider.",
)


def _dividers_sample(rng: random.Random, instruction: str | None) -> dict:
    return {"relation": "exactly", "n": rng.randint(2, 5)}


def _dividers_check(p: dict, response: str) -> tuple[bool, str]:
    blocks = divided_paragraphs(response)
    if blocks is None:
        return False, "an empty paragraph between two *** dividers"
    got = len(blocks)
    return compare(got, p["relation"], int(p["n"])), \
        f"{plural(got, 'paragraph')} between *** dividers, wanted {relation_words(p['relation'])} {p['n']}"


register(ConstraintType(
    "paragraph_dividers", "a number of paragraphs separated by *** divider lines", _dividers_sample,
    lambda p: pick_form(_DIVIDER_TEMPLATES, p).format(
        rel="" if p["relation"] == "exactly" else {"at_most": "no more than", "around": "about"}.get(
            p["relation"], relation_words(p["relation"])), count=plural(int(p["n"]), "paragraph")).replace("  ", " "),
    _dividers_check, forms=len(_DIVIDER_TEMPLATES), weight=0.6,
    conflicts=frozenset({"paragraph_count", "json_format", "two_responses", "first_word"})))

# ---------------------------------------------------------------- first word of the n-th paragraph

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
OPENERS_FIRST = ("Imagine", "Today", "Consider", "Picture", "Historically")
OPENERS_LATER = ("However", "Moreover", "Finally", "Overall", "Meanwhile", "Next", "Still", "Ultimately")
_LEAD = re.compile(r"^[\s#>*_\-\"'“‘(\[]+")

_FIRST_WORD_TEMPLATES = (
    "Write exactly {count} separated by blank lines, and begin the {ordinal} paragraph with the word \"{word}\".",
    "Your answer should have {count} (leave an empty line between them); its {ordinal} paragraph has to open with "
    "\"{word}\".",
    "Use {count} with a blank line between each. The {ordinal} one must start with the word {word}.",
)


def first_word_of(paragraph: str) -> str:
    """The paragraph's first word, past Markdown marks and opening quotes ("**However,**" -> "However")."""
    ws = T.words(_LEAD.sub("", paragraph))
    return ws[0] if ws else ""


def _first_word_sample(rng: random.Random, instruction: str | None) -> dict:
    total = rng.randint(2, 4)
    nth = rng.randint(1, total)
    return {"paragraphs": total, "nth": nth, "word": rng.choice(OPENERS_FIRST if nth == 1 else OPENERS_LATER)}


def _first_word_check(p: dict, response: str) -> tuple[bool, str]:
    nth, word, total = int(p["nth"]), str(p["word"]), p.get("paragraphs")
    if nth < 1:
        raise ValueError(f"nth must be 1 or more, got {nth}")
    paras = T.paragraphs(response)
    if total is not None and len(paras) != int(total):
        return False, f"{plural(len(paras), 'paragraph')}, wanted exactly {total}"
    if len(paras) < nth:
        return False, f"only {plural(len(paras), 'paragraph')}, so there is no paragraph {nth}"
    got = first_word_of(paras[nth - 1])
    ok = got.lower() == word.lower()
    return ok, f"paragraph {nth} starts with {got!r}" + ("" if ok else f", wanted {word!r}")


def _first_word_phrase(p: dict) -> str:
    nth = int(p["nth"])
    ordinal = _ORDINALS[nth - 1] if 1 <= nth <= len(_ORDINALS) else f"{nth}th"
    total = p.get("paragraphs")
    if total is None:
        return f"Begin the {ordinal} paragraph of your answer with the word \"{p['word']}\"."
    return pick_form(_FIRST_WORD_TEMPLATES, p).format(count=plural(int(total), "paragraph"), ordinal=ordinal,
                                                      word=p["word"])


register(ConstraintType(
    "first_word", "the n-th paragraph (blank-line separated) starts with a given word", _first_word_sample,
    _first_word_phrase, _first_word_check, forms=len(_FIRST_WORD_TEMPLATES), weight=0.5,
    conflicts=frozenset({"paragraph_count", "paragraph_dividers", "json_format", "two_responses", "start_with",
                         "repeat_prompt", "sections", "title"})))
