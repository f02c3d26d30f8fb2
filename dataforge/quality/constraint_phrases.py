"""Patterns for the constraint types that are not plain counts: keywords, letters, capitals, fixed
openings and endings, case, commas, JSON, titles, placeholders, highlights, quotation marks, a
postscript, the response language, repeating the request, two responses and a fixed answer choice.
Each detector returns (type, params) pairs; `about_the_response` drops what describes data, a person,
a quotation or a question about constraints."""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

from ..constraints.language import LANGUAGE_ALIASES, LANGUAGE_NAMES, code_of
from .constraint_context import NUM, about_the_response, postfix_relation, prefix_relation, sentence_at, to_int

Found = tuple[str, dict[str, Any]]
DETECTORS: list[Callable[[str], Iterator[Found]]] = []


def detector(fn: Callable[[str], Iterator[Found]]) -> Callable[[str], Iterator[Found]]:
    DETECTORS.append(fn)
    return fn


def detect_phrases(text: str) -> list[Found]:
    return [f for d in DETECTORS for f in d(text)]


_Q = r"(?:\"([^\"\n]{1,120}?)\"|“([^”\n]{1,120}?)”|'([^'\n]{1,60}?)'(?!\w)|‘([^’\n]{1,60}?)’)"
_QUOTED_LIST = re.compile(_Q)
_NEG = r"(?:do\s+not|don't|never|without|avoid|must\s+not|should\s+not|shouldn't|mustn't|cannot|can't|refrain\s+from)"


def _first(pattern: re.Pattern, text: str, fits: Callable[[re.Match], bool] = lambda m: True) -> re.Match | None:
    """The first match that `fits` and is about the response (not data, a quotation or a question)."""
    return next((m for m in pattern.finditer(text) if fits(m) and about_the_response(text, m.start())), None)


def _quoted_items(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None).strip() for m in _QUOTED_LIST.finditer(text)]


def _times(text: str) -> tuple[str, int] | None:
    """A relation and count of times ("at least 3 times", "fewer than 20 times", "twice", "exactly once")."""
    m = re.search(rf"{NUM}\s+times?\b|\b(once|twice|thrice)\b", text, re.I)
    if not m:
        return None
    n = to_int(m.group(1) or m.group(2))
    rel = prefix_relation(text[:m.start()]) or (postfix_relation(text[m.end():]), 0)
    relation, offset = rel if rel[0] else ("exactly", 0)
    return relation, n + offset


# ---------------------------------------------------------------- keywords

_KW_NOUN = r"(?:key\s*words?|words?|terms?|phrases?)"
# "use the 'ls' command" names a tool; "use the word 'encore'" asks for a word: with use/using the noun is required
_KW_TRIGGER = re.compile(rf"\b(?:(?:include|including|mention|mentioning|contain|containing|feature)\w*\s+"
                         rf"(?:(?:the|these|this|following)\s+)?{_KW_NOUN}?|(?:use|using)\s+(?:the\s+|these\s+|this\s+)?"
                         rf"(?:following\s+)?{_KW_NOUN})[\s:,]*(?=[\"“'‘])", re.I)
_KW_FORBID = re.compile(rf"\b(?:{_NEG}\s+(?:\w+\s+){{0,2}}?(?:use|using|include|including|mention|mentioning|say)"
                        r"\w*\s+(?:(?:the|these|any\s+of\s+the)\s+)?(?:key\s*words?|words?|terms?)?|avoid\s+"
                        r"(?:using\s+)?(?:the\s+)?(?:key\s*words?|words?|terms?)|without\s+(?:using\s+|mentioning\s+)?"
                        r"(?:the\s+)?(?:key\s*words?|words?|terms?))[\s:,]*(?=[\"“'‘])", re.I)
_KW_MUST_NOT = re.compile(r"\b(?:the\s+)?(?:key\s*)?words?\s+(" + _Q + r")\s+(?:must|should|may)\s+not\s+"
                          r"(?:appear|be\s+used)", re.I)


def _kw_list(text: str, start: int) -> list[str]:
    """Quoted keywords right after `start`, joined by commas, 'and' or 'or' (marks such as "## " are no words)."""
    out = []
    pos = start
    while True:
        m = re.compile(r"\s*(?:,\s*(?:and\b|or\b)?|\band\b|\bor\b|/)?\s*" + _Q).match(text, pos)
        if not m:
            return out
        item = next(g for g in m.groups() if g is not None).strip()
        if re.search(r"\w", item):
            out.append(item)
        pos = m.end()


@detector
def keywords(text: str) -> Iterator[Found]:
    forbidden_spans = []
    for m in _KW_FORBID.finditer(text):
        kws = _kw_list(text, m.end())
        forbidden_spans.append((m.start(), m.end()))
        if kws and about_the_response(text, m.start()):
            yield "exclude_keywords", {"keywords": kws}
    for m in _KW_MUST_NOT.finditer(text):
        if about_the_response(text, m.start()):
            yield "exclude_keywords", {"keywords": _quoted_items(m.group(1))}
    for m in _KW_TRIGGER.finditer(text):
        if any(a <= m.start() < b or a <= m.end() <= b for a, b in forbidden_spans):
            continue
        kws = _kw_list(text, m.end())
        after = text[m.end():sentence_at(text, m.end())[1] + 1]
        if not kws or not about_the_response(text, m.start()) or _times(after):
            continue
        if re.search(r"\b(?:not|never|n't)\s*$", text[max(0, m.start() - 12):m.start()], re.I):
            continue
        yield "include_keywords", {"keywords": kws}


_FREQ = re.compile(r"(?:(?:key\s*)?words?\s+|keyword\s+|term\s+|mention\s+|use\s+(?:the\s+)?(?:key\s*)?words?\s+|"
                   r"use\s+)?" + _Q, re.I)


@detector
def keyword_frequency(text: str) -> Iterator[Found]:
    for m in _FREQ.finditer(text):
        word = next(g for g in m.groups() if g is not None).strip()
        if re.search(r"\bletter\s*$", text[:m.start()], re.I) or len(word.split()) > 3 or len(word) < 2:
            continue
        s0, s1 = sentence_at(text, m.end())
        after = text[m.end():s1]
        t = _times(after)
        verbs = r"\b(?:appear|used?|using|occur|mention|repeat|include)\w*|\btimes\b"
        if t is None or not (re.search(verbs, after, re.I) or re.search(verbs, text[max(s0, m.start() - 25):m.start()],
                                                                         re.I)):
            continue
        if not about_the_response(text, m.start()):
            continue
        yield "keyword_frequency", {"keyword": word, "relation": t[0], "n": t[1]}


_LETTER = re.compile(r"\bletter\s+[\"“'‘]?([A-Za-z])[\"”'’]?(?![\w])|\bcount\s+(?:your|the)\s+[\"“'‘]?([A-Za-z])[\"”'’]?"
                     r"['’]?s\b", re.I)


@detector
def letter_frequency(text: str) -> Iterator[Found]:
    for m in _LETTER.finditer(text):
        s0, s1 = sentence_at(text, m.end())
        t = _times(text[m.end():s1])
        if t and about_the_response(text, m.start()):
            yield "letter_frequency", {"letter": (m.group(1) or m.group(2)).lower(), "relation": t[0], "n": t[1]}


_CAPS_WORDS = re.compile(r"\b(?:capitali[sz]ed\s+words|words?\s+(?:with|in|written\s+(?:entirely\s+|fully\s+|wholly\s+)?"
                         r"(?:in|with)|fully\s+in|that\s+are\s+"
                         r"(?:in\s+)?)\s*(?:all|full)?\s*(?:capital\s+letters|caps|uppercase|capitals)|(?:fully\s+|all[\s-])"
                         r"(?:capitali[sz]ed|caps|uppercase)\s+words|words\s+by\s+writing\s+them\s+in\s+all\s+capital)",
                         re.I)


@detector
def capital_word_frequency(text: str) -> Iterator[Found]:
    for m in _CAPS_WORDS.finditer(text):
        s0, s1 = sentence_at(text, m.start())
        sentence = text[s0:s1]
        t = _times(text[m.end():s1])
        if t is None:
            n = list(re.finditer(rf"{NUM}\s+(?:\w+\s+){{0,2}}?(?:words?|capitali[sz]ed)", text[s0:m.end()], re.I))
            if not n:
                continue
            last = n[-1]
            rel = prefix_relation(sentence[:last.start()])
            t = (rel[0], to_int(last.group(1)) + rel[1]) if rel else ("exactly", to_int(last.group(1)))
        if about_the_response(text, s0):
            yield "capital_word_frequency", {"relation": t[0], "n": t[1]}


# ---------------------------------------------------------------- openings and endings

_RESP = r"(?:(?:it|(?:your|the)\s+(?:entire\s+|whole\s+)?(?:response|answer|reply|output|text|message))\s+)?"
_EXACT = r"(?:(?:with\s+)?(?:the|this)\s+(?:exact\s+|following\s+)?(?:phrase|sentence|words?|line)\s*:?\s*)?"
_START = re.compile(rf"\b(?:start|begin|open)\w*\s+{_RESP}(?:with|by\s+saying)\s+{_EXACT}(?={_Q})|"
                    rf"\b(?:response|answer|reply|output)\s+(?:should|must|has\s+to)\s+(?:start|begin|open)\s+with\s+"
                    rf"{_EXACT}(?={_Q})|\bfirst\s+words?\s+of\s+{_RESP}\s*(?:must|should)\s+be\s*:?\s*(?={_Q})", re.I)
_END = re.compile(rf"\b(?:end|finish|conclude|close|wrap\s+up)\w*\s+{_RESP}(?:with|by\s+saying)\s+{_EXACT}(?={_Q})|"
                  rf"\b(?:response|answer|reply|output|it)\s+(?:should|must|has\s+to|needs\s+to)\s+(?:end|finish|"
                  rf"conclude)\s+with\s+{_EXACT}(?={_Q})|\b(?:very\s+)?last\s+words?\s+(?:of\s+{_RESP})?\s*"
                  rf"(?:must|should)\s+be\s*:?\s*(?={_Q})|\bconclude\s+with\s+{_EXACT}(?={_Q})", re.I)


def _fixed_phrase(text: str, pattern: re.Pattern, type_name: str) -> Iterator[Found]:
    for m in pattern.finditer(text):
        around = text[max(0, m.start() - 40):m.end()]
        if re.search(r"\bparagraph\b|\bpost-?script\b", around, re.I):
            continue  # "paragraph 2 must start with ..." is first_word; "a postscript beginning with" a postscript
        if re.search(r"\b(?:that|which|whose|who)\s+(?:\w+\s+)?$", text[max(0, m.start() - 30):m.start()], re.I):
            continue  # "words that begin with 'pre'" describes other things, not the response
        q = _QUOTED_LIST.match(text, m.end())
        if q and about_the_response(text, m.start()):
            yield type_name, {"phrase": next(g for g in q.groups() if g is not None).strip()}


@detector
def start_end(text: str) -> Iterator[Found]:
    yield from _fixed_phrase(text, _START, "start_with")
    yield from _fixed_phrase(text, _END, "end_with")


# ---------------------------------------------------------------- case, commas, JSON

_LOWER = re.compile(r"\b(?:in|using|use|only|all|entirely|be|written|write|letters?:?)\s+(?:all\s+|only\s+)?"
                    r"(?:lower[\s-]?case|small\s+letters)\b|\blower[\s-]?case\s+(?:only|letters\s+only)\b|"
                    r"\bno\s+capital\s+letters\b|\bnot\s+a\s+single\s+capital\s+letter\b", re.I)
_UPPER = re.compile(r"\b(?:in|using|use|only|all|entirely|be|written|write)\s+(?:all\s+|only\s+|english\s+)?"
                    r"(?:upper[\s-]?case|capital\s+letters|caps(?:\s+lock)?|capitals)\b(?!\s+(?:for|should|words|at|"
                    r"no\s+more|fewer|less))|\bupper[\s-]?case\s+only\b|\bin\s+all\s+capital\s+letters\b", re.I)


@detector
def case(text: str) -> Iterator[Found]:
    for pattern, name in ((_LOWER, "lowercase"), (_UPPER, "uppercase")):
        for m in pattern.finditer(text):
            s0, s1 = sentence_at(text, m.start())
            sentence = text[s0:s1]
            if _CAPS_WORDS.search(sentence) or not _not_a_conversion(text, m) or \
                    re.search(r"\bto\s+(?:all\s+)?(?:lower|upper)", text[max(0, m.start() - 10):m.end()], re.I):
                continue
            if about_the_response(text, m.start()):
                yield name, {}
                break


_COMMAS = re.compile(rf"\b(?:{_NEG}|no|zero)\s+(?:\w+\s+){{0,2}}?(?:any\s+)?commas\b|\bcommas\s+(?:are\s+)?"
                     r"(?:not\s+allowed|forbidden|banned|prohibited)|\bno\s+commas\b", re.I)


@detector
def no_commas(text: str) -> Iterator[Found]:
    if _first(_COMMAS, text):
        yield "no_commas", {}


_JSON = re.compile(r"\b(?:in|as|using|use|into|with)\s+(?:a\s+|an\s+)?(?:valid\s+|well-formed\s+|only\s+)?json\b"
                   r"(?!\s+(?:schema|parser|file|files|keys?\s+only))|\b(?:valid|only)\s+json\b(?!\s+(?:data|type|value|schema|"
                   r"parser|file|string|syntax))|\bjson\s+format\b|"
                   r"\b(?:entire|whole)\s+(?:output|response|answer)\s+(?:should|must)\s+be\s+(?:in\s+)?(?:valid\s+)?json\b",
                   re.I)


def _not_a_conversion(text: str, m: re.Match) -> bool:
    """"Convert this XML to JSON" or "turn the string to all lowercase" makes the format the task's subject."""
    before = text[max(0, m.start() - 60):m.start()]
    return not (re.search(r"\b(?:convert|translate|transform|parse|serialize|turn|change)\w*\b[^.?!]*$", before, re.I)
                and re.search(r"\b(?:into|to)\s+(?:all\s+)?$", before + text[m.start():m.start()], re.I)
                or re.search(r"\b(?:convert|transform|serialize)\w*\b[^.?!]*\b(?:into|to)\s", before + m.group(0) + " ",
                             re.I))


@detector
def json_format(text: str) -> Iterator[Found]:
    if _first(_JSON, text, lambda m: _not_a_conversion(text, m)):
        yield "json_format", {}


# ---------------------------------------------------------------- marks: title, placeholders, highlights, quotes, P.S.

@detector
def title(text: str) -> Iterator[Found]:
    m = re.search(r"double\s+angul?ar\s+brackets|double\s+angle\s+brackets|<<[^<>\n]*>>|between\s+<<\s+and\s+>>",
                  text, re.I)
    if m and about_the_response(text, m.start()):
        yield "title", {}


def _at_least_near(text: str, start: int, end: int) -> int:
    """The count in "at least N" within the sentence around a mention (1 when none is given)."""
    s0, s1 = sentence_at(text, start)
    for m in re.finditer(rf"{NUM}", text[s0:s1], re.I):
        rel = prefix_relation(text[s0:s0 + m.start()])
        if rel and rel[0] == "at_least":
            return to_int(m.group(1)) + rel[1]
    return 1


@detector
def placeholders(text: str) -> Iterator[Found]:
    m = re.search(r"\bplaceholders?\b", text, re.I)
    if m and re.search(r"square[\s-]?brackets?|\[[^\]\n]{1,30}\]", text, re.I) and about_the_response(text, m.start()):
        yield "placeholders", {"n": _at_least_near(text, m.start(), m.end())}


@detector
def highlights(text: str) -> Iterator[Found]:
    m = re.search(r"\bhighlight(?:ed|s|ing)?\b", text, re.I)
    if m and re.search(r"markdown|\*[^*\s][^*\n]*\*", text, re.I) and about_the_response(text, m.start()):
        yield "highlights", {"n": _at_least_near(text, m.start(), m.end())}


_QUOTATION = re.compile(r"\b(?:wrap|enclose|put|surround|place)\w*\s+(?:\w+\s+){0,4}?(?:in|with|inside|within|by|"
                        r"between)\s+double\s+(?:quotation\s+marks|quotes)|\b(?:entire|whole)\s+(?:\w+\s+){0,3}?"
                        r"(?:wrapped|enclosed|surrounded)\s+(?:in|with|by)\s+double\s+(?:quotation\s+marks|quotes)|"
                        r"\binside\s+double\s+(?:quotation\s+marks|quotes)", re.I)


_WHOLE = re.compile(r"\b(?:entire|whole|all|everything|answer|reply|response|output)\b", re.I)


@detector
def quotation(text: str) -> Iterator[Found]:
    if _first(_QUOTATION, text, lambda m: bool(_WHOLE.search(text[slice(*sentence_at(text, m.start()))]))):
        yield "quotation", {}


_PS = re.compile(r"\b(?:add|include|append|end|finish|close|with|followed\s+by|sign\s+off\s+with)\w*\s+(?:\w+\s+){0,4}?"
                 r"(?:a|an|the)?\s*(?:post-?script|p\.\s?p\.\s?s\b\.?|p\.\s?s\b\.?)|\bpost-?script\s+(?:that\s+)?"
                 r"(?:starting|beginning|begins|starts)\s+with", re.I)


@detector
def postscript(text: str) -> Iterator[Found]:
    m = _first(_PS, text)
    if m:
        rest = text[m.start():min(len(text), sentence_at(text, m.start())[1] + 30)]
        yield "postscript", {"marker": "P.P.S." if re.search(r"p\.\s?p\.\s?s", rest, re.I) else "P.S."}


# ---------------------------------------------------------------- language

_LANG_NAMES = "|".join(sorted([n for n in LANGUAGE_NAMES.values()] + list(LANGUAGE_ALIASES), key=len, reverse=True))
_NATIVE = {"en español": "es", "en espanol": "es", "en français": "fr", "auf deutsch": "de", "in italiano": "it",
           "em português": "pt", "на русском": "ru"}
_LANGUAGE = re.compile(rf"\b(?:respond|answer|reply|write|written|compose|speak|response|answer|output|text)\w*\b"
                       rf"[^.?!\n]{{0,60}}?\b(?:in|using)\s+(?:the\s+)?({_LANG_NAMES})\b(?!\s+(?:words?|terms?))|"
                       rf"\b(?:in|use|using)\s+({_LANG_NAMES})\s+(?:only|for\s+(?:the|your)\s+(?:entire\s+|whole\s+|full\s+)?"
                       rf"(?:response|reply|answer))\b|\bonly\s+in\s+({_LANG_NAMES})\b|"
                       rf"\b(?:response|answer|reply)\s+(?:must|should)\s+be\s+in\s+({_LANG_NAMES})\b|"
                       rf"\b({'|'.join(_NATIVE)})", re.I)


def _language_code(m: re.Match) -> str | None:
    name = next(g for g in m.groups() if g)
    return _NATIVE.get(name.lower()) or code_of(name)


def _not_a_translation(text: str, m: re.Match) -> bool:
    return not re.search(r"\btranslat\w*|\binto\s+|\bfrom\s+\w+\s+to\s",
                         text[sentence_at(text, m.start())[0]:m.end()], re.I)


@detector
def response_language(text: str) -> Iterator[Found]:
    m = _first(_LANGUAGE, text, lambda m: _not_a_translation(text, m) and _language_code(m) is not None)
    if m:
        yield "response_language", {"language": _language_code(m)}


# ---------------------------------------------------------------- whole-response shapes

_REPEAT = re.compile(r"\b(?:repeat|restat|echo|copy\s+out|reproduc)\w*\s+(?:back\s+)?(?:the|this|my|your|the\s+"
                     r"following)?\s*(?:request|question|prompt|task|instruction|query)\b|\brepeat(?:ed)?\s+back\b",
                     re.I)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|$)")


@detector
def repeat_prompt(text: str) -> Iterator[Found]:
    if not _REPEAT.search(text):
        return
    kept = [s.group(0).strip() for s in _SENTENCE.finditer(text)
            if s.group(0).strip() and not re.search(r"\b(?:repeat|restat|echo|copy\s+out|verbatim|word[\s-]for[\s-]word|"
                                                    r"repetition)\w*", s.group(0), re.I)]
    request = " ".join(kept).strip()
    if request:
        yield "repeat_prompt", {"request": request}


@detector
def two_responses(text: str) -> Iterator[Found]:
    if re.search(r"\*{6}|six\s+asterisks|6\s+asterisk", text, re.I) and \
            re.search(r"\b(?:two|2)\s+(?:\w+\s+){0,2}?(?:responses|answers|versions|\w+s)\b|\btwo\s+responses\b", text,
                      re.I):
        yield "two_responses", {}


_CHOICE = re.compile(r"\b(?:one\s+(?:\(and\s+only\s+one\)\s+)?of|pick\s+one|choose\s+one|exactly\s+one\s+of|"
                     r"only\s+one\s+of)\b[^\"“'‘\n.?!]{0,60}?(?=[\"“'‘])", re.I)


@detector
def answer_choice(text: str) -> Iterator[Found]:
    for m in _CHOICE.finditer(text):
        line_end = text.find("\n", m.end())
        region = text[m.end(): line_end if line_end >= 0 else len(text)]
        opts = _kw_list(re.sub(r"\s*/\s*", ", ", region), 0)
        if len(opts) >= 2 and about_the_response(text, m.start()):
            yield "answer_choice", {"options": opts}
            return
