"""What the constraint parser needs to read a number and to tell a constraint on the response from
text that only mentions one: numbers written as digits or words, relation words ("fewer than 50",
"50 or more", "between 3 and 5"), and the contexts that describe data ("if the input has fewer than
3 words"), a person or thing in the task ("a character who never uses commas"), one item of many
("each bullet under 15 words"), or a quotation ('the teacher said "answer in 50 words"').
"""

from __future__ import annotations

import re

_SMALL = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
          "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
          "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_SPECIAL = {"a single": 1, "single": 1, "once": 1, "twice": 2, "thrice": 3, "a couple of": 2, "a dozen": 12,
            "dozen": 12, "a hundred": 100}
_alt = lambda words: "|".join(sorted(words, key=len, reverse=True))  # noqa: E731
_UNDER_100 = rf"(?:(?:{_alt(_TENS)})(?:[-\s](?:{_alt(k for k in _SMALL if _SMALL[k] < 10 and k != 'zero')}))?" \
             rf"|{_alt(_SMALL)})"
NUMBER_WORDS = rf"(?:(?:{_UNDER_100}|a)\s+hundred(?:\s+(?:and\s+)?{_UNDER_100})?|{_alt(_SPECIAL)}|{_UNDER_100})"
NUM = rf"(\d{{1,3}}(?:,\d{{3}})+|\d+|{NUMBER_WORDS})"


def to_int(text: str) -> int:
    """The value of a number written as digits ("1,000") or words ("two hundred and fifty", "twice")."""
    t = " ".join(text.lower().replace("-", " ").split())
    if t.replace(",", "").isdigit():
        return int(t.replace(",", ""))
    if t in _SPECIAL:
        return _SPECIAL[t]
    total, current = 0, 0
    for w in t.split():
        if w in ("and",):
            continue
        if w == "a":
            current = 1
        elif w in _SMALL:
            current += _SMALL[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current = (current or 1) * 100
        else:
            raise ValueError(f"not a number: {text!r}")
    return total + current


# A relation word right before a number: (pattern, relation, offset added to the number).
# "less than 50" means at most 49; "more than 50" at least 51.
PREFIX_RELATIONS = [  # checked in order: "no fewer than" before "fewer than", "no more than" before "more than"
    (r"(?:no|not)\s+(?:more|longer)\s+than|at\s+(?:the\s+)?most|up\s+to|(?:a\s+)?max(?:imum)?(?:\s+of)?:?|max\.|"
     r"(?:not|n't|never)\s+(?:to\s+)?(?:exceed|go\s+(?:over|beyond)|be\s+(?:longer|more)\s+than)|exceed(?:ing)?\s+no|"
     r"within|limit(?:ed)?(?:\s+\w+){0,3}\s+to|keep(?:\s+\w+){0,3}\s+to|cap(?:ped)?\s+at|(?:word|length)\s+limit:?|"
     r"limit:|≤|<=", "at_most", 0),
    (r"at\s+least|no\s+(?:fewer|less|shorter)\s+than|not\s+(?:fewer|less)\s+than|(?:a\s+)?minimum(?:\s+of)?:?|"
     r"min\.?|≥|>=", "at_least", 0),
    (r"less\s+than|fewer\s+than|under|below|shorter\s+than|<", "at_most", -1),
    (r"more\s+than|over|greater\s+than|longer\s+than|exceeding|above|>", "at_least", 1),
    (r"exactly|precisely", "exactly", 0),
    (r"around|about|approximately|approx\.?|roughly|circa|close\s+to|~", "around", 0),
]
POSTFIX_RELATIONS = [
    (r"or\s+(?:fewer|less|under|shorter)|max(?:imum)?\b|at\s+(?:the\s+)?most|tops|or\s+below|(?:limit|ceiling|cap)\b",
     "at_most"),
    (r"or\s+more|or\s+longer|at\s+least|minimum\b|min\b|or\s+above|plus\b|floor\b", "at_least"),
]


def prefix_relation(before: str) -> tuple[str, int] | None:
    """The relation named by the words just before a number, or None."""
    for pattern, relation, offset in PREFIX_RELATIONS:
        if re.search(rf"(?<![\w])(?:{pattern})\s*$", before, re.I):
            return relation, offset
    return None


def postfix_relation(after: str) -> str | None:
    for pattern, relation in POSTFIX_RELATIONS:
        if re.match(rf"\s*[,(]?\s*(?:{pattern})", after, re.I):
            return relation
    return None


# ---------------------------------------------------------------- contexts that are not about the response

_QUOTES = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|‘[^’\n]*’|(?<!\w)'[^'\n]+'(?!\w)")  # an apostrophe in a word is no quote
_CLAUSE_END = re.compile(r"[.!?;](?=\s|$)|[(\n]")  # "(" opens an aside wherever it stands
_CODE_TASK = re.compile(r"\b(?:function|program|script|regex|regular\s+expression|sql|query|method|algorithm|"
                        r"class\s+that|print|rest(?:ful)?\s+api|api\s+(?:that|which|to)|endpoint|implement|code\s+(?:that|to))\b", re.I)
_RESPONSE_SUBJECT = re.compile(r"\byour\s+(?:entire\s+|whole\s+)?(?:response|answer|reply|output)\b", re.I)
# Word problems and stories ("Mike can type 65 words per minute. ... How many ...?"): a sentence that neither
# addresses the reader nor gives an order, in a text that asks a question, describes the situation.
_SECOND_PERSON = re.compile(r"\b(?:you|your|yours|yourself)\b", re.I)
_IMPERATIVE = re.compile(
    r"^[\s\"'“‘(\[*\-•\d.)]*(?:please\s+|and\s+|then\s+|also\s+|now\s+|first,?\s+|finally,?\s+)?(?:answer|respond|reply|"
    r"write|rewrite|keep|use|limit|give|explain|describe|summari[sz]e|list|include|make|put|wrap|end|start|begin|"
    r"finish|do|don't|avoid|never|provide|return|output|format|add|create|compose|draft|tell|name|state|offer|"
    r"pick|choose|select|mention|highlight|separate|split|organi[sz]e|divide|structure|enclose|restate|repeat|"
    r"respond|translate|generate|produce|present|conclude|close|open|refrain|ensure|be|no|only|max|min|at|"
    r"exactly|in|under|less|fewer|within|length|word|must|should|requirements?|rules?|constraints?|note|"
    r"remember|important|it\s+(?:should|must|needs|has\s+to|shall)|(?:the|this|each|every)\s+\w+\s+(?:should|must|"
    r"needs\s+to|has\s+to))\b", re.I)
# words that, shortly before a constraint, show it describes data, a person, one item, or the user's text
_DATA_CUE = re.compile(
    r"\b(?:if|when|whenever|whether|unless|given|each|every|who|whose|my|our|says?|said)\b|\b(?:has|have|had)\b(?!\s+to\b)"
    r"|\bthere\s+(?:are|is|were|was)\b"
    r"|\babout\s+(?:a|an|the)\s+\w+(?:\s+\w+)?\s+(?:that|which|with)\b", re.I)
_MODAL_HAVE = re.compile(r"\b(?:should|must|will|shall|to|needs?\s+to|has\s+to|have\s+to)\s+(?:have|has)\b|"
                         r"\bso\s+(?:that\s+)?(?:it|they|the\s+\w+)\s+(?:has|have)\b", re.I)
_COMMA = re.compile(r",\s")
_GENERIC_SUBJECT = re.compile(r"^\s*(?:a|an)\s+\w+\s+(?:must|should|can|is|are)\b", re.I)


def clause_start(text: str, pos: int) -> int:
    """Where the clause holding `pos` begins (after the last . ! ? ; ( or line break before it)."""
    start = 0
    for m in _CLAUSE_END.finditer(text):  # the whole text, so "x.y" is no boundary even right before `pos`
        if m.end() > pos:
            break
        start = m.end()
    return start


def in_quotes(text: str, pos: int) -> bool:
    return any(m.start() < pos < m.end() for m in _QUOTES.finditer(text))


_REQUEST = re.compile(r"^\s*(?:\w+\s+){0,2}?(?:can|could|would|will)\s+(?:you|u)\b", re.I)
# "Can you answer in German?" is a request, not a question about constraints
_QUESTION_START = re.compile(r"^\s*(?!(?:can|could|would|will)\s+you\b)(?:why|what|what's|how|who|where|when|which|is|"
                             r"are|do|does|did|can|could|should|would|will)\b", re.I)


def sentence_at(text: str, pos: int) -> tuple[int, int]:
    """(start, end) of the sentence holding `pos`; `end` is past its closing . ! ? (or the text's end)."""
    start = max(text.rfind(c, 0, pos) for c in ".!?\n") + 1
    ends = [i for i in (text.find(c, pos) for c in ".!?\n") if i >= 0]
    return start, (min(ends) + 1 if ends else len(text))


def in_question(text: str, pos: int) -> bool:
    """Inside a question ("Why do people write in all caps?", "If he types 810 words, how long ...?"): it talks
    about a constraint or the data, it does not set one. "Can you answer in German?" is a request."""
    start, end = sentence_at(text, pos)
    sentence = text[start:end]
    if not sentence.endswith("?"):
        return False
    if _QUESTION_START.match(text[start:pos]):
        return True
    aside = text.rfind("(", start, pos) > text.rfind(")", start, pos)  # "(max 280 characters): why ...?"
    return not (aside or _IMPERATIVE.match(sentence) or _REQUEST.match(sentence))


def in_narrative(text: str, pos: int) -> bool:
    """A declarative sentence of a story or word problem that ends in a question (see `_IMPERATIVE`)."""
    if "?" not in text:
        return False
    sentence = text[slice(*sentence_at(text, pos))]
    return not (_SECOND_PERSON.search(sentence) or _IMPERATIVE.match(sentence) or sentence.endswith("?"))


def about_the_response(text: str, start: int, window_words: int = 6) -> bool:
    """False when the constraint starting at `start` sits in a quotation, in a clause that describes data or a
    person ("if the input has", "a character who", "my essay"), one item of many ("each bullet"), a general
    statement ("A tweet must be ...") or a coding task whose counts are about the data."""
    if in_quotes(text, start) or in_question(text, start) or in_narrative(text, start):
        return False
    cs = clause_start(text, start)
    clause_before = text[cs:start]
    # cue words belong to the comma-separated part they are in: "someone who has never had it, in 30 words"
    part = _COMMA.split(clause_before)[-1]
    near = " ".join(part.split()[-window_words:])
    cue = _DATA_CUE.search(near)
    if cue and not (cue.group(0).lower() in ("has", "have") and _MODAL_HAVE.search(near)):
        return False
    if _GENERIC_SUBJECT.match(clause_before):
        return False
    if _CODE_TASK.search(_QUOTES.sub(" ", text)) and not _RESPONSE_SUBJECT.search(clause_before):
        return False
    return True
