"""Finds the verifiable constraints people write in an instruction ("Answer in fewer than 50 words",
"YOUR ENTIRE RESPONSE IN LOWERCASE", "P.S. no commas please", "Requirements: - max 100 words - JSON")
and returns them as specs of the constraint library (`dataforge.constraints`), so the gate can check
responses to instructions written by people or models, not only those the evolver annotated.

Counts (words, sentences, paragraphs, characters, bullets, sections) are read generically: every
"<number> <unit>" is found, digits or words, and its relation comes from the words around it
("less than", "at most", "or more", "between ... and", "around"); the other types have their own
patterns (`constraint_phrases`). Constraints that describe data, a person in the task, one item of
many, or a quotation are left out (`constraint_context`), since a false detection sends a good record
to review. Measured on a labelled set of 364 instructions: see the README.
"""

from __future__ import annotations

import re
from typing import Any

from .constraint_context import NUM, about_the_response, postfix_relation, prefix_relation, to_int
from .constraint_phrases import detect_phrases

Spec = dict[str, Any]

_UNITS = [  # (pattern, constraint type), longest first
    (r"bullet[\s-]?points?|bulleted\s+(?:items?|points?)|bullets?", "bullet_count"),
    (r"words?", "word_count"),
    (r"sentences?", "sentence_count"),
    (r"paragraphs?|paras?", "paragraph_count"),
    (r"characters?|chars?", "char_count"),
    (r"sections?", "sections"),
]
_UNIT = "|".join(f"(?P<u{i}>{p})" for i, (p, _) in enumerate(_UNITS))
_ADJ = r"(?:(?:short|full|complete|separate|distinct|concise|brief|clear|key|main|markdown|total)\s+)?"
_COUNT = re.compile(rf"(?<![\w.,]){NUM}(?:\s*(?:-|–|to|and|or)\s*{NUM})?(?:[\s-]+|-?){_ADJ}(?:{_UNIT})(?![\w])",
                    re.I)
_BETWEEN = re.compile(r"between\s*$", re.I)
# "N words each", "N words per sentence", "10 words that start with Q", "4 words in all caps": not the response's length
_PER_ITEM_AFTER = re.compile(r"^\s*(?:each|per\s+\w+|apiece|in\s+each|for\s+each|that|which|starting|beginning|"
                             r"from|of\s+(?:the|your|which)|to\s+describe|in\s+(?:all\s+)?(?:caps|capital|upper)|"
                             r"written|fully|long\s+each|by\s+writing|in\s+bold|in\s+italics|of\s+(?:every|each|a|an)|"
                             r"(?:a|an|every)\s+(?:second|minute|hour|day|week)|in\s+(?:a|the|each|every|this|that)\s+"
                             r"(?:string|text|list|sentence|file|document|book|page|array|column|line))\b", re.I)
# counts that describe a thing the response makes or handles, not the response: "an 8-character password"
_OBJECT_NOUN = re.compile(r"\b(?:password|passcode|pin|string|username|user\s*name|id|identifier|key|token|code|hash|name|"
                          r"word|acronym|anagram|palindrome|sequence|variable)s?\b", re.I)
_FIRST_LAST = re.compile(r"\b(?:first|last|top|next|previous|most\s+\w+|the)\s*$", re.I)  # "the two sentences"
_FOR_EACH = re.compile(r"^\s*(?:[\w-]+\s+){0,2}?(?:for\s+each|each\s+of|for\s+every|per\s+(?:item|person|line|row))\b",
                       re.I)
_LIST_OF = re.compile(rf"(?:bulleted|numbered|bullet(?:-point)?)\s+list\s+of\s+{NUM}\b|{NUM}[\s-]+item\s+"
                      rf"(?:bulleted|numbered)\s+list|numbered\s+list\s+of\s+{NUM}\s+(?:steps|items|points)", re.I)
_AND_MORE = re.compile(rf"^\s*,?\s*and\s+(no\s+(?:fewer|less|more)\s+than|at\s+(?:least|most)|fewer\s+than|"
                       rf"less\s+than|more\s+than)\s+{NUM}\b(?![\s-]*(?:\w+\s+)?(?:{_UNIT}))", re.I)
_DIVIDER = re.compile(r"\*\*\*(?!\*)|markdown\s+divider|three\s+asterisks", re.I)
_NTH_FIRST = re.compile(r"(?:first\s+word\s+of\s+(?:the\s+)?(?P<o1>\w+)\s+paragraph|paragraph\s+(?P<o2>\w+)"
                        r"\s+(?:must|should|has\s+to|will)?\s*(?:start|begin|open)|(?:start|begin|open)\s+"
                        r"paragraph\s+(?P<o3>\w+)|(?:the|its|your)\s+(?P<o4>\w+)\s+(?:paragraph|one)\s+(?:must|should|"
                        r"has\s+to|needs\s+to)?\s*(?:start|begin|open)|(?:start|begin|open)\s+the\s+(?P<o5>\w+)\s+paragraph"
                        r"(?:\s+of\s+(?:your|the)\s+(?:answer|response|reply))?)", re.I)
_ORDINAL = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
            "ninth": 9, "tenth": 10, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5}
_FIRST_WORD = re.compile(r"\s*(?:(?:must|should|has\s+to|needs\s+to|will|is\s+to)\s+)?(?:(?:start|begin|open)\w*\s+)?"
                         r"(?:with|by|be)?\s*:?\s*(?:the\s+)?(?:word\s+)?[\"“'‘]?([A-Za-z\u00C0-\uFFFF][\w'’-]*)[\"”'’]?",
                         re.I)
_SECTION_MARKER = re.compile(r"(?:mark|begin|start|open|introduce|label)\w*\s+(?:the\s+beginning\s+of\s+)?"
                             r"(?:each|every)?\s*(?:section|one|part)?[^.]{0,40}?\b(?:with|by|as|using)\s+(?:the\s+)?"
                             r"(?:(?:header|heading|line|label|word|title)s?\s+)?[\"“'‘]?([A-Za-z]+)\s+(?:\d+|X|N|\{?[a-z]\}?)\b",
                             re.I)


def _spec(type_name: str, **params: Any) -> Spec:
    from ..constraints import phrase

    spec: Spec = {"type": type_name, "params": params}
    spec["phrase"] = phrase(spec)
    return spec


def _unit_type(m: re.Match) -> str:
    return next(t for i, (_, t) in enumerate(_UNITS) if m.group(f"u{i}"))


def _bare_relation(ctype: str, n: int, before: str, hyphenated: bool) -> str:
    """The relation of a count written without one: "in 50 words" is a budget, "a 500-word essay" a target size,
    "in 3 sentences" an exact count ("in one sentence": at most one)."""
    if ctype in ("word_count", "char_count"):
        return "around" if hyphenated and ctype == "word_count" and n > 1 else "at_most"
    if ctype in ("sentence_count", "paragraph_count") and n == 1:
        return "at_most"
    return "exactly"


def _counts(text: str) -> list[tuple[str, dict, int]]:
    """(type, params, position) for every count of words, sentences, paragraphs, characters, bullets, sections."""
    found = []
    for m in _COUNT.finditer(text):
        ctype = _unit_type(m)
        before, after = text[:m.start()], text[m.end():]
        if not about_the_response(text, m.start()) or _PER_ITEM_AFTER.match(after) or _FOR_EACH.match(after) \
                or _FIRST_LAST.search(before):
            continue
        if ctype == "char_count" and _OBJECT_NOUN.search(text[max(0, m.start() - 40):m.end() + 40]):
            continue
        lo = to_int(m.group(1))
        hi = to_int(m.group(2)) if m.group(2) else None
        if hi is not None and hi > lo:  # a range: "80-120 words", "between 3 and 5 sentences", "two to three"
            found += [(ctype, {"relation": "at_least", "n": lo}, m.start()),
                      (ctype, {"relation": "at_most", "n": hi}, m.start())]
            continue
        if hi is not None:
            continue  # "3 or 4" read backwards, or a list of numbers: not a constraint we can state
        if _BETWEEN.search(before):
            continue  # "a *** line between one paragraph and the next"
        rel = prefix_relation(before)
        post = postfix_relation(after)
        # "a 500-word essay", "a 100 word essay": the count used as an adjective names a target size
        unit_word = re.search(r"[A-Za-z]+$", m.group(0)).group(0)
        hyphenated = bool(re.search(r"\d-|[a-z]-", m.group(0)[:len(m.group(1)) + 1])) or (
            lo != 1 and not unit_word.lower().endswith("s"))
        if rel:
            relation, n = rel[0], lo + rel[1]
        elif post:
            relation, n = post, lo
        else:
            relation, n = _bare_relation(ctype, lo, before, hyphenated), lo
        found.append((ctype, {"relation": relation, "n": max(n, 0)}, m.start()))
        more = _AND_MORE.match(after)  # "no more than 80 words and no fewer than 40"
        if more:
            rel2 = prefix_relation(more.group(1))
            if rel2:
                found.append((ctype, {"relation": rel2[0], "n": to_int(more.group(2)) + rel2[1]}, m.start()))
    for m in _LIST_OF.finditer(text):
        n = next(g for g in m.groups() if g)
        if about_the_response(text, m.start()):
            found.append(("bullet_count", {"relation": "exactly", "n": to_int(n)}, m.start()))
    return found


def _shape_counts(text: str, counts: list[tuple[str, dict, int]]) -> list[Spec]:
    """Counts as library specs: bullets and sections are exact; paragraphs become `paragraph_dividers` when the
    text asks for *** dividers, or `first_word` when it fixes the first word of a paragraph."""
    specs: list[Spec] = []
    nth = _NTH_FIRST.search(text)
    first_word = None
    if nth and about_the_response(text, nth.start()):
        ordinal = next(g for g in nth.groups() if g).lower()
        k = _ORDINAL.get(ordinal) or (int(ordinal) if ordinal.isdigit() else None)
        w = _FIRST_WORD.match(text, nth.end())
        if k and w:
            first_word = {"nth": k, "word": w.group(1)}
    divider = bool(_DIVIDER.search(text))
    if divider and not any(c[0] == "paragraph_count" for c in counts):
        # "a story in 5 parts, separated by ***": with dividers asked for, parts are the paragraphs
        m = re.search(rf"(?<![\w.]){NUM}\s+(?:parts|blocks|chunks)\b", text, re.I)
        if m and about_the_response(text, m.start()):
            counts = [*counts, ("paragraph_count", {"relation": "exactly", "n": to_int(m.group(1))}, m.start())]
    for ctype, p, _ in counts:
        if ctype == "bullet_count":
            if p["relation"] == "exactly":
                specs.append(_spec("bullet_count", n=p["n"]))
        elif ctype == "sections":
            if p["relation"] == "exactly":
                marker = _SECTION_MARKER.search(text)
                extra = {"marker": marker.group(1)} if marker and marker.group(1).lower() not in (
                    "markdown", "a", "the", "header", "heading") else {}
                specs.append(_spec("sections", n=p["n"], **extra))
        elif ctype == "paragraph_count" and first_word is not None:
            if p["relation"] == "exactly":
                first_word["paragraphs"] = p["n"]
        elif ctype == "paragraph_count" and divider:
            specs.append(_spec("paragraph_dividers", **p))
        else:
            specs.append(_spec(ctype, **p))
    if first_word is not None:
        specs.append(_spec("first_word", **first_word))
    return specs


def parse_constraints(instruction: str) -> list[Spec]:
    """Constraint specs stated in `instruction` (library types; an empty list when none is certain)."""
    text = instruction.strip()
    specs = _shape_counts(text, _counts(text))
    specs += [_spec(t, **p) for t, p in detect_phrases(text)]
    return _dedupe(specs)


def _dedupe(specs: list[Spec]) -> list[Spec]:
    seen, out = set(), []
    for s in specs:
        key = (s["type"], repr(sorted(s["params"].items())))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
