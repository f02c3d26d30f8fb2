"""Constraints on how much is written: words, sentences, paragraphs, bullet points, sections."""

from __future__ import annotations

import random

from . import text as T
from .base import ConstraintType, compare, plural, register, relation_words

_REL_WEIGHTS = {"at_most": 0.5, "at_least": 0.35, "exactly": 0.15}


def _relation(rng: random.Random) -> str:
    return rng.choices(list(_REL_WEIGHTS), weights=list(_REL_WEIGHTS.values()))[0]


def _counting(name: str, unit: str, measure, choices: dict[str, tuple[int, ...]], summary: str,
              template: str) -> ConstraintType:
    def sample(rng: random.Random, instruction: str | None) -> dict:
        rel = _relation(rng)
        return {"relation": rel, "n": rng.choice(choices[rel])}

    def phrase(p: dict) -> str:
        return template.format(rel=relation_words(p["relation"]), count=plural(int(p["n"]), unit))

    def check(p: dict, response: str) -> tuple[bool, str]:
        got = measure(response)
        ok = compare(got, p["relation"], int(p["n"]))
        return ok, f"{plural(got, unit)}, wanted {relation_words(p['relation'])} {p['n']}"

    return register(ConstraintType(name, summary, sample, phrase, check))


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


def _bullets_sample(rng: random.Random, instruction: str | None) -> dict:
    return {"n": rng.randint(2, 6)}


def _bullets_check(p: dict, response: str) -> tuple[bool, str]:
    got = len(T.bullets(response))
    return got == int(p["n"]), f"{plural(got, 'bullet point')}, wanted exactly {p['n']}"


register(ConstraintType(
    "bullet_count", "exact number of Markdown bullet points", _bullets_sample,
    lambda p: f"Your answer must contain exactly {plural(int(p['n']), 'bullet point')} in Markdown, "
              "each on its own line starting with '* '.",
    _bullets_check))


def _sections_sample(rng: random.Random, instruction: str | None) -> dict:
    return {"n": rng.randint(2, 4)}


def _sections_check(p: dict, response: str) -> tuple[bool, str]:
    got = len(T.headers(response))
    return got == int(p["n"]), f"{plural(got, 'header line')}, wanted exactly {p['n']}"


register(ConstraintType(
    "sections", "exact number of sections, each under a Markdown header", _sections_sample,
    lambda p: f"Organise your answer into exactly {plural(int(p['n']), 'section')}, each starting with "
              "a Markdown header line such as '## Overview'.",
    _sections_check))
