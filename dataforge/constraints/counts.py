"""Constraints on how much is written: words, sentences, paragraphs, bullet points, sections."""

from __future__ import annotations

import random
import re
from functools import partial

from . import text as T
from .base import ConstraintType, compare, pick_form, plural, register, relation_words

_REL_WEIGHTS = {"at_most": 0.5, "at_least": 0.35, "exactly": 0.15}


def _relation(rng: random.Random) -> str:
    return rng.choices(list(_REL_WEIGHTS), weights=list(_REL_WEIGHTS.values()))[0]


def _count_sample(choices: dict[str, tuple[int, ...]], rng: random.Random, instruction: str | None) -> dict:
    rel = _relation(rng)
    while not choices.get(rel):
        rel = _relation(rng)
    return {"relation": rel, "n": rng.choice(choices[rel])}


def _count_phrase(template: str, unit: str, p: dict) -> str:
    return template.format(rel=relation_words(p["relation"]), count=plural(int(p["n"]), unit))


def _count_check(measure, unit: str, p: dict, response: str) -> tuple[bool, str]:
    got = measure(response)
    ok = compare(got, p["relation"], int(p["n"]))
    return ok, f"{plural(got, unit)}, wanted {relation_words(p['relation'])} {p['n']}"


def _counting(name: str, unit: str, measure, choices: dict[str, tuple[int, ...]], summary: str,
              template: str) -> ConstraintType:
    # plain functions bound with partial, not closures: the logic then runs (and can be tested, mutated)
    # when a check is made, not only when the module is imported
    return register(ConstraintType(name, summary, partial(_count_sample, choices),
                                   partial(_count_phrase, template, unit), partial(_count_check, measure, unit)))


_counting("word_count", "word", T.word_count,
          {"at_most": (50, 80, 100, 150, 200), "at_least": (60, 100, 150, 200), "exactly": (20, 30, 40)},
          "limit on the number of words", "Answer in {rel} {count}.")
_counting("sentence_count", "sentence", lambda s: len(T.sentences(s)),
          {"at_most": (2, 3, 4, 5), "at_least": (3, 4, 5, 6), "exactly": (1, 2, 3, 4)},
          "limit on the number of sentences", "Your response must contain {rel} {count}.")
_counting("paragraph_count", "paragraph", lambda s: len(T.paragraphs(s)),
          {"at_most": (2, 3), "at_least": (2, 3, 4), "exactly": (2, 3, 4)},
          "limit on the number of paragraphs (separated by blank lines)",
          "Write {rel} {count}, separated by blank lines.")
_counting("char_count", "character", lambda s: len(s.strip()),
          {"at_most": (140, 200, 280, 500), "at_least": (300, 500, 800), "exactly": (), "around": ()},
          "limit on the number of characters (spaces included, surrounding whitespace not)",
          "Keep the whole response to {rel} {count}, spaces included.")


def _bullets_sample(rng: random.Random, instruction: str | None) -> dict:
    return {"n": rng.randint(2, 6)}


def _bullets_check(p: dict, response: str) -> tuple[bool, str]:
    got = len(T.bullets(response))
    return got == int(p["n"]), f"{plural(got, 'bullet point')}, wanted exactly {p['n']}"


_BULLET_TEMPLATES = (
    "Lay the answer out as exactly {count} in Markdown, one per line, each line opening with '* '.",
    "Write exactly {count} and nothing else in list form; begin each of those Markdown lines with '* '.",
    "Structure the reply as precisely {count} (Markdown lines that begin with '* ').",
)

register(ConstraintType(
    "bullet_count", "exact number of Markdown bullet points", _bullets_sample,
    lambda p: pick_form(_BULLET_TEMPLATES, p).format(count=plural(int(p["n"]), "bullet point")),
    _bullets_check, forms=len(_BULLET_TEMPLATES)))


def _sections_sample(rng: random.Random, instruction: str | None) -> dict:
    return {"n": rng.randint(2, 4)}


def _sections_check(p: dict, response: str) -> tuple[bool, str]:
    marker = p.get("marker")
    if marker:  # "Mark each section with SECTION X": lines that begin with the marker and a number
        got = len(re.findall(r"^[ \t#*]*" + re.escape(str(marker)) + r"[ \t]+\d+", response, re.M))
        return got == int(p["n"]), f"{plural(got, f'{marker} N line')}, wanted exactly {p['n']}"
    got = len(T.headers(response))
    return got == int(p["n"]), f"{plural(got, 'header line')}, wanted exactly {p['n']}"


def _sections_phrase(p: dict) -> str:
    if p.get("marker"):
        return (f"Divide your answer into exactly {plural(int(p['n']), 'section')} and open each one with a line "
                f"reading {p['marker']} 1, {p['marker']} 2 and so on.")
    return (f"Organise your answer into exactly {plural(int(p['n']), 'section')}, each starting with "
            "a Markdown header line such as '## Overview'.")


register(ConstraintType(
    "sections", "exact number of sections, each under a Markdown header (or a marker line such as SECTION 1)",
    _sections_sample, _sections_phrase, _sections_check))


# ---------------------------------------------------------------- letters and capitalised words

def _rel_phrase(relation: str) -> str:
    return {"at_most": "no more than", "around": "about"}.get(relation, relation_words(relation))


_LETTER_TEMPLATES = (
    "The letter '{letter}' must appear {rel} {count} in your reply (capital or small both count).",
    "Make sure your answer uses the letter {letter} {rel} {count}, counting upper and lower case.",
    "Count your '{letter}'s: the response should contain that letter {rel} {count}.",
)


def _letter_sample(rng: random.Random, instruction: str | None) -> dict:
    if rng.random() < 0.6:
        return {"letter": rng.choice("etaoinsrhl"), "relation": "at_least", "n": rng.randint(5, 15)}
    return {"letter": rng.choice("zqxjkv"), "relation": "at_most", "n": rng.randint(1, 3)}


def _letter_check(p: dict, response: str) -> tuple[bool, str]:
    letter = str(p["letter"])
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"letter must be a single letter, got {letter!r}")
    got = response.lower().count(letter.lower())
    return compare(got, p["relation"], int(p["n"])), \
        f"letter '{letter}' {plural(got, 'time')}, wanted {relation_words(p['relation'])} {p['n']}"


register(ConstraintType(
    "letter_frequency", "a letter used a given number of times (case-insensitive)", _letter_sample,
    lambda p: pick_form(_LETTER_TEMPLATES, p).format(letter=p["letter"], rel=_rel_phrase(p["relation"]),
                                                     count=plural(int(p["n"]), "time")),
    _letter_check, forms=len(_LETTER_TEMPLATES), weight=0.5))


def capital_words(text: str) -> list[str]:
    """Words written wholly in capitals, at least two letters long: "NASA", "VERY" and "CO2" count;
    "I", "A" and "Nasa" do not (a lone capital letter is ordinary writing, not emphasis)."""
    return [w for w in T.words(text) if sum(c.isalpha() for c in w) >= 2 and w.isupper()]


_CAPS_TEMPLATES = (
    "Use {rel} {count} written entirely in capital letters (like THIS) for emphasis.",
    "Your reply should contain {rel} {count} in ALL CAPS.",
    "Write {rel} {count} fully in uppercase letters somewhere in the response.",
)


def _caps_sample(rng: random.Random, instruction: str | None) -> dict:
    if rng.random() < 0.6:
        return {"relation": "at_least", "n": rng.randint(2, 6)}
    return {"relation": "at_most", "n": rng.randint(1, 4)}


def _caps_check(p: dict, response: str) -> tuple[bool, str]:
    got = len(capital_words(response))
    return compare(got, p["relation"], int(p["n"])), \
        f"{plural(got, 'all-capital word')}, wanted {relation_words(p['relation'])} {p['n']}"


register(ConstraintType(
    "capital_word_frequency", "a number of words written in all capitals (two letters or more)", _caps_sample,
    lambda p: pick_form(_CAPS_TEMPLATES, p).format(rel=_rel_phrase(p["relation"]), count=plural(int(p["n"]), "word")),
    _caps_check, forms=len(_CAPS_TEMPLATES), weight=0.5,
    conflicts=frozenset({"lowercase", "uppercase"})))
