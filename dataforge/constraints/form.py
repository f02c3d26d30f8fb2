"""Constraints on what is written and how: keywords, fixed openings and endings, case, punctuation,
JSON, placeholders, a <<title>>, highlights, quotation marks and a postscript."""

from __future__ import annotations

import json
import random
import re
from functools import partial

from . import text as T
from .base import ConstraintType, compare, pick_form, plural, register, relation_words

# Generic words a model uses out of habit; banning them is a real, checkable constraint.
FILLER_WORDS = ("very", "really", "basically", "actually", "important", "simply", "thing", "good",
                "great", "just", "many", "also", "however", "example", "different")
# Fallback vocabulary when the instruction gives no usable content word.
GENERIC_KEYWORDS = ("process", "example", "result", "reason", "method", "future", "balance", "risk",
                    "history", "quality", "detail", "community", "evidence", "goal")
# Task verbs say what to do, not what the task is about: poor keywords.
TASK_VERBS = frozenset("""explain describe write give list provide create generate tell make find answer
following given show suggest identify compare discuss summarize summarise classify output return using
based please need want know think""".split())
OPENINGS = ("Here is my answer:", "Short answer:", "Let me explain.", "To put it simply,", "In brief:")
ENDINGS = ("Feel free to ask if anything is unclear.", "Hope this helps.", "That is all.",
           "Let me know if you have further questions.")
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S.")


def _keywords(rng: random.Random, instruction: str | None, k: int) -> list[str]:
    pool = [w for w in T.content_words(instruction or "") if len(w) >= 4 and w.isalpha() and w not in TASK_VERBS]
    if len(pool) < k:
        pool += [w for w in GENERIC_KEYWORDS if w not in pool]
    return rng.sample(pool, k)


def _quoted(ws: list[str], joiner: str) -> str:
    q = [f'"{w}"' for w in ws]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + f" {joiner} " + q[-1]


# ---------------------------------------------------------------- keywords

def _include_check(p: dict, response: str) -> tuple[bool, str]:
    missing = [k for k in p["keywords"] if T.count_phrase(response, k) == 0]
    return not missing, f"missing {missing}" if missing else "all keywords present"


register(ConstraintType(
    "include_keywords", "given keywords must appear",
    lambda rng, ins: {"keywords": _keywords(rng, ins, rng.randint(1, 2))},
    lambda p: f"Include the {'word' if len(p['keywords']) == 1 else 'words'} "
              f"{_quoted(p['keywords'], 'and')} in your response.",
    _include_check))


def _exclude_check(p: dict, response: str) -> tuple[bool, str]:
    found = [k for k in p["keywords"] if T.count_phrase(response, k) > 0]
    return not found, f"used forbidden {found}" if found else "no forbidden word used"


register(ConstraintType(
    "exclude_keywords", "given words must not appear",
    lambda rng, ins: {"keywords": rng.sample(FILLER_WORDS, rng.randint(1, 2))},
    lambda p: f"Do not use the {'word' if len(p['keywords']) == 1 else 'words'} "
              f"{_quoted(p['keywords'], 'or')} anywhere in your response.",
    _exclude_check))


def _freq_sample(rng: random.Random, instruction: str | None) -> dict:
    rel = rng.choice(("at_least", "at_least", "exactly", "at_most"))
    return {"keyword": _keywords(rng, instruction, 1)[0], "relation": rel, "n": rng.randint(2, 4)}


def _freq_check(p: dict, response: str) -> tuple[bool, str]:
    got = T.count_phrase(response, p["keyword"])
    return compare(got, p["relation"], int(p["n"])), \
        f"\"{p['keyword']}\" used {plural(got, 'time')}, wanted {relation_words(p['relation'])} {p['n']}"


register(ConstraintType(
    "keyword_frequency", "a keyword used a given number of times", _freq_sample,
    lambda p: f"Use the word \"{p['keyword']}\" {relation_words(p['relation'])} {plural(int(p['n']), 'time')}.",
    _freq_check))


# ---------------------------------------------------------------- openings and endings

def _start_check(p: dict, response: str) -> tuple[bool, str]:
    ok = response.lstrip().lower().startswith(p["phrase"].lower())
    return ok, "starts with the phrase" if ok else f"starts with {response.lstrip()[:40]!r}"


register(ConstraintType(
    "start_with", "response begins with a fixed phrase",
    lambda rng, ins: {"phrase": rng.choice(OPENINGS)},
    lambda p: f"Begin your response with the exact phrase \"{p['phrase']}\".",
    _start_check, conflicts=frozenset({"json_format", "title", "quotation", "lowercase", "uppercase"})))


_END_TEMPLATES = (
    'End your response with the exact phrase "{phrase}" and write nothing after it.',
    'Close your reply with the words "{phrase}" and add nothing after them.',
    'The very last words of your answer must be "{phrase}"',
)


def _end_check(p: dict, response: str) -> tuple[bool, str]:
    ok = response.rstrip().lower().endswith(p["phrase"].lower())
    return ok, "ends with the phrase" if ok else f"ends with {response.rstrip()[-40:]!r}"


register(ConstraintType(
    "end_with", "response ends with a fixed phrase",
    lambda rng, ins: {"phrase": rng.choice(ENDINGS)},
    lambda p: pick_form(_END_TEMPLATES, p).format(phrase=p["phrase"]),
    _end_check, forms=len(_END_TEMPLATES), conflicts=frozenset({"json_format", "postscript", "quotation", "lowercase", "uppercase"})))


# ---------------------------------------------------------------- case and punctuation

def _case_check(want: str, p: dict, response: str) -> tuple[bool, str]:
    letters = [c for c in response if c.isalpha()]
    if not letters:
        return False, "no letters"
    bad = [c for c in letters if (c != c.lower() if want == "lower" else c != c.upper())]
    return not bad, f"{len(bad)} letters not {want}case" if bad else f"all {want}case"


_LOWER_TEMPLATES = (
    "Write the whole reply in lowercase, without a single capital letter anywhere.",
    "Use only lowercase letters throughout your answer, even at the start of sentences.",
    "Every letter of your response should be lowercase: not a single capital letter, even for names.",
)
register(ConstraintType(
    "lowercase", "all lowercase letters", lambda rng, ins: {},
    lambda p: pick_form(_LOWER_TEMPLATES, p), partial(_case_check, "lower"), forms=len(_LOWER_TEMPLATES),
    conflicts=frozenset({"uppercase", "postscript"})))
register(ConstraintType(
    "uppercase", "all capital letters", lambda rng, ins: {},
    lambda p: "Your entire response must be in English capital letters only.",
    partial(_case_check, "upper"), conflicts=frozenset({"lowercase", "json_format", "keyword_frequency"}), weight=0.6))


def _no_commas_check(p: dict, response: str) -> tuple[bool, str]:
    n = response.count(",") + response.count("，")
    return n == 0, f"{plural(n, 'comma')}" if n else "no commas"


register(ConstraintType(
    "no_commas", "no commas at all", lambda rng, ins: {},
    lambda p: "Do not use any commas in your response.",
    _no_commas_check, conflicts=frozenset({"json_format"})))


# ---------------------------------------------------------------- structure

def _json_check(p: dict, response: str) -> tuple[bool, str]:
    body = T.strip_code_fence(response).strip()
    try:
        json.loads(body)
    except ValueError as exc:
        return False, f"not valid JSON: {exc}"
    if not body.startswith(("{", "[")):
        return False, "JSON, but a bare value rather than an object or array"
    return True, "valid JSON"


register(ConstraintType(
    "json_format", "the whole output is JSON", lambda rng, ins: {},
    lambda p: "Format your entire output as valid JSON; you may wrap it in a ```json code block.",
    _json_check,
    conflicts=frozenset({"bullet_count", "sections", "paragraph_count", "sentence_count", "title", "postscript",
                         "highlights", "quotation", "placeholders"}), weight=0.7))

_PLACEHOLDER = re.compile(r"\[[^\[\]\n]{1,60}\](?!\()")


def _placeholders_check(p: dict, response: str) -> tuple[bool, str]:
    got = len(_PLACEHOLDER.findall(response))
    return got >= int(p["n"]), f"{plural(got, 'placeholder')}, wanted at least {p['n']}"


register(ConstraintType(
    "placeholders", "placeholders in square brackets", lambda rng, ins: {"n": rng.randint(1, 3)},
    lambda p: f"Include at least {plural(int(p['n']), 'placeholder')} in square brackets, such as [address].",
    _placeholders_check))

_TITLE = re.compile(r"<<[^<>\n]*\w[^<>\n]*>>")


_TITLE_TEMPLATES = (
    "Add a title set between << and >>, for instance <<A Short Title>>.",
    "Put a title in your answer, enclosed in double angle brackets like <<My Title>>.",
    "Give the response a title marked by double angle brackets, e.g. <<Title Here>>.",
)


def _title_check(p: dict, response: str) -> tuple[bool, str]:
    m = _TITLE.search(response)
    return bool(m), f"title {m.group(0)}" if m else "no <<title>> found"


register(ConstraintType(
    "title", "a title wrapped in double angular brackets", lambda rng, ins: {},
    lambda p: pick_form(_TITLE_TEMPLATES, p), _title_check, forms=len(_TITLE_TEMPLATES)))

_HIGHLIGHT = re.compile(r"\*{1,2}[^\s*\n][^*\n]*?\*{1,2}")


def _highlights_check(p: dict, response: str) -> tuple[bool, str]:
    got = len([m for m in _HIGHLIGHT.findall(response) if T.words(m)])
    return got >= int(p["n"]), f"{plural(got, 'highlighted section')}, wanted at least {p['n']}"


_HIGHLIGHT_TEMPLATES = (
    "Make at least {n} {parts} of the answer stand out as Markdown highlights, written *like this*.",
    "Use Markdown to mark at least {n} {passages} of your reply as highlights, for example *a key point*.",
    "Include at least {n} highlighted {spans} in Markdown, such as *an important phrase*.",
)


def _highlights_phrase(p: dict) -> str:
    n = int(p["n"])
    words = {w: (w[:-1] if n == 1 else w) for w in ("parts", "passages", "spans")}
    return pick_form(_HIGHLIGHT_TEMPLATES, p).format(n=n, **words)


register(ConstraintType(
    "highlights", "Markdown-highlighted sections", lambda rng, ins: {"n": rng.randint(1, 3)},
    _highlights_phrase, _highlights_check, forms=len(_HIGHLIGHT_TEMPLATES), weight=0.6))


def _quotation_check(p: dict, response: str) -> tuple[bool, str]:
    s = response.strip()
    ok = len(s) >= 2 and s[0] in "\"“" and s[-1] in "\"”"
    return ok, "wrapped in double quotes" if ok else "not wrapped in double quotes"


register(ConstraintType(
    "quotation", "whole response wrapped in double quotes", lambda rng, ins: {},
    lambda p: "Wrap your entire response in double quotation marks.",
    _quotation_check, weight=0.5))


def _postscript_check(p: dict, response: str) -> tuple[bool, str]:
    marker = p.get("marker", "P.S.")
    m = re.search(r"(?:^|\n)[ \t]*" + re.escape(marker) + r"[ \t]*(\S.*)", response)
    if not m:
        return False, f"no line starting with {marker}"
    if not response[: m.start()].strip():
        return False, f"{marker} is the whole response, not a postscript"
    return True, f"postscript {marker} present"


register(ConstraintType(
    "postscript", "a postscript at the end", lambda rng, ins: {"marker": rng.choice(POSTSCRIPT_MARKERS)},
    lambda p: f"At the end of your response, add a postscript starting with {p['marker']}",
    _postscript_check))
