"""Finds verifiable constraints written in an instruction ("in 50 words or fewer", "exactly 3 bullet
points", "respond in JSON", "do not use commas", "end your response with ...") and returns them as
specs of the constraint library (`dataforge.constraints`), so the gate can check responses to
instructions that were written by people or by models, not only those the evolver annotated.

Patterns are deliberately conservative: a constraint is only detected when the wording leaves no
doubt, since a false detection would send a good record to review.
"""

from __future__ import annotations

import re
from typing import Any

Spec = dict[str, Any]

_NUM_WORDS = {"one": 1, "a single": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
              "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15,
              "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "hundred": 100, "a hundred": 100}
_NUM = r"(\d{1,4}|a single|a hundred|" + "|".join(sorted(_NUM_WORDS, key=len, reverse=True)) + r")"
_QUOTED = r"[\"“'‘]([^\"”’\n]{1,120}?)[\"”'’]"

_AT_MOST = r"(?:no more than|not more than|at most|up to|a maximum of|maximum of|max(?:imum)?|fewer than|less than|under|within)"
_AT_LEAST = r"(?:at least|no fewer than|no less than|a minimum of|minimum of|more than|over)"
_STRICT = {"fewer than": -1, "less than": -1, "under": -1, "more than": 1, "over": 1}


def _num(text: str) -> int:
    text = text.lower().strip()
    return int(text) if text.isdigit() else _NUM_WORDS[text]


def _spec(type_name: str, **params: Any) -> Spec:
    try:
        from ..constraints import phrase
        spec: Spec = {"type": type_name, "params": params}
        spec["phrase"] = phrase(spec)
        return spec
    except Exception:  # library older/newer than this parser: keep the spec without a phrase
        return {"type": type_name, "params": params, "phrase": ""}


_DATA_CONTEXT = re.compile(r"\b(?:has|have|had|contains?|containing|string|input|text|list|array|file|if|where|"
                           r"whose|with)\W*(?:\w+\W+){0,3}$", re.I)


def _about_response(text: str, m: re.Match | None) -> re.Match | None:
    """Drop matches that describe the data a program handles ("if the input has less than 3 words")."""
    if m is None:
        return None
    return None if _DATA_CONTEXT.search(text[max(0, m.start() - 40):m.start()]) else m


def _counted(text: str, unit: str, type_name: str) -> list[Spec]:
    """word/sentence/paragraph limits in their common wordings."""
    u = rf"{unit}s?"
    found: list[Spec] = []
    search = lambda pattern: _about_response(text, re.search(pattern, text, re.I))  # noqa: E731
    m = search(rf"\b{_AT_MOST}\s+{_NUM}\s+{u}\b")
    if m:
        words = re.search(_AT_MOST, m.group(0), re.I).group(0).lower()
        n = _num(m.group(1)) + _STRICT.get(words, 0)
        found.append(_spec(type_name, relation="at_most", n=max(n, 1)))
    m = search(rf"\b{_NUM}\s+{u}\s+or\s+(?:fewer|less)\b")
    if m and not found:
        found.append(_spec(type_name, relation="at_most", n=_num(m.group(1))))
    m = search(rf"\b{_AT_LEAST}\s+{_NUM}\s+{u}\b")
    if m:
        words = re.search(_AT_LEAST, m.group(0), re.I).group(0).lower()
        found.append(_spec(type_name, relation="at_least", n=_num(m.group(1)) + _STRICT.get(words, 0)))
    m = search(rf"\b{_NUM}\s+{u}\s+or\s+more\b")
    if m and not any(s["params"]["relation"] == "at_least" for s in found):
        found.append(_spec(type_name, relation="at_least", n=_num(m.group(1))))
    m = search(rf"\b(?:exactly|precisely)\s+{_NUM}\s+{u}\b")
    if m:
        found.append(_spec(type_name, relation="exactly", n=_num(m.group(1))))
    return found


def parse_constraints(instruction: str) -> list[Spec]:
    """Constraint specs stated in `instruction` (library types; empty list when none is certain)."""
    text = " ".join(instruction.split())
    specs: list[Spec] = []
    specs += _counted(text, "word", "word_count")
    specs += _counted(text, "sentence", "sentence_count")
    specs += _counted(text, "paragraph", "paragraph_count")
    if not any(s["type"] == "sentence_count" for s in specs):
        m = re.search(r"\b(?:in|using|with)\s+(one|a single|1)\s+sentence\b", text, re.I)
        if m:
            specs.append(_spec("sentence_count", relation="at_most", n=1))
    m = re.search(rf"\b(?:exactly|in|with|using|as|of)\s+{_NUM}\s+bullet(?:\s+|-)points?\b", text, re.I)
    if m:
        specs.append(_spec("bullet_count", n=_num(m.group(1))))
    if re.search(r"\b(?:respond|answer|reply|output|format (?:your|the) (?:entire )?(?:answer|response|output)"
                 r"|return your answer|give your answer)\s+(?:only\s+)?(?:in|as)\s+(?:valid\s+)?json\b"
                 r"|\b(?:entire|whole) (?:output|response|answer) (?:should|must) be (?:valid )?json\b"
                 r"|\bformat your entire output as valid json\b", text, re.I):
        specs.append(_spec("json_format"))
    if re.search(r"\b(?:do not|don't|never|without)\s+(?:use|using|include|including)?\s*(?:any\s+)?commas\b"
                 r"|\bno commas\b", text, re.I):
        specs.append(_spec("no_commas"))
    m = re.search(r"\b(?:end|finish|conclude) (?:your|the) (?:response|answer|reply|output|email|letter)"
                  r" with (?:the (?:exact )?(?:phrase|sentence|words?) )?" + _QUOTED, text, re.I)
    if m:
        specs.append(_spec("end_with", phrase=m.group(1).strip()))
    m = re.search(r"\b(?:begin|start) (?:your|the) (?:response|answer|reply|output)"
                  r" with (?:the (?:exact )?(?:phrase|sentence|words?) )?" + _QUOTED, text, re.I)
    if m:
        specs.append(_spec("start_with", phrase=m.group(1).strip()))
    case = (r"\b(?:(?:your|the) (?:entire |whole )?(?:response|answer|reply|output) (?:must|should) be"
            r"|(?:respond|answer|reply|write your (?:response|answer))) (?:written )?(?:entirely |only )?in (?:all )?")
    if re.search(case + r"lower ?case\b", text, re.I):
        specs.append(_spec("lowercase"))
    elif re.search(case + r"(?:capital letters|upper ?case|caps)\b", text, re.I):
        specs.append(_spec("uppercase"))
    m = re.search(r"\binclude (?:the )?(?:key)?words? ((?:" + _QUOTED + r"(?:,\s*|\s+and\s+)?)+)", text, re.I)
    if m:
        kws = re.findall(_QUOTED, m.group(1))
        if kws:
            specs.append(_spec("include_keywords", keywords=[k.strip() for k in kws]))
    m = re.search(r"\b(?:do not|don't|never) use the (?:key)?words? ((?:" + _QUOTED + r"(?:,\s*|\s+or\s+|\s+and\s+)?)+)",
                  text, re.I)
    if m:
        kws = re.findall(_QUOTED, m.group(1))
        if kws:
            specs.append(_spec("exclude_keywords", keywords=[k.strip() for k in kws]))
    if re.search(r"double angular brackets|<<\s*title\s*>>", text, re.I):
        specs.append(_spec("title"))
    m = re.search(r"\bpostscript starting with (P\.P\.S\.|P\.S\.)", text, re.I)
    if m:
        specs.append(_spec("postscript", marker=m.group(1).upper()))
    return _dedupe(specs)


def _dedupe(specs: list[Spec]) -> list[Spec]:
    seen, out = set(), []
    for s in specs:
        key = (s["type"], repr(sorted(s["params"].items())))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
