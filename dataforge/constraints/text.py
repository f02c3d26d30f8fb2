"""Plain-text measurements shared by the constraint checkers and the elimination rules.

Kept deliberately simple and predictable (regexes, no tokenizer) so that the phrase a model reads
("at most 50 words") and the number a checker computes agree with what a person would count.
"""

from __future__ import annotations

import re

# a letter or digit of any script (a combining accent continues a word); punctuation and symbols of any
# script (em dash, full-width comma, arrows) separate words and are never counted as one
_LETTER = r"(?:[^\W_]|[\u0300-\u036F])"
_WORD = re.compile(_LETTER + r"+(?:['’\-]" + _LETTER + r"+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'’”)\]]*\s+(?=\S)")
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n+")
_BULLET = re.compile(r"^[ \t]*(?:[*\-•+]|\d+[.)])[ \t]+\S", re.M)
_HEADER = re.compile(r"^[ \t]*#{1,6}[ \t]+\S", re.M)
_FENCE = re.compile(r"\A\s*```[a-zA-Z]*\s*\n(.*?)\n?\s*```\s*\Z", re.S)


def words(text: str) -> list[str]:
    """Words as a reader counts them: runs of letters/digits, joined by apostrophes or hyphens."""
    return _WORD.findall(text)


def word_count(text: str) -> int:
    return len(words(text))


def sentences(text: str) -> list[str]:
    """Sentences split after . ! or ? followed by whitespace; a trailing fragment counts as one."""
    text = text.strip()
    if not text:
        return []
    parts = []
    for block in _PARAGRAPH_SPLIT.split(text):
        parts += [s for s in _SENTENCE_END.split(block.strip()) if words(s)]
    return parts


def paragraphs(text: str) -> list[str]:
    """Blocks separated by one or more blank lines (a Markdown `***` line also separates)."""
    text = re.sub(r"^[ \t]*\*\*\*[ \t]*$", "\n", text, flags=re.M)
    return [p for p in _PARAGRAPH_SPLIT.split(text.strip()) if p.strip()]


def bullets(text: str) -> list[str]:
    """Lines that start with a Markdown bullet (`*`, `-`, `+`, `•`) or a number (`1.`, `2)`)."""
    return _BULLET.findall(text)


def headers(text: str) -> list[str]:
    """Markdown header lines (`# ...` to `###### ...`)."""
    return _HEADER.findall(text)


def strip_code_fence(text: str) -> str:
    """The body of a response wrapped in one ``` fence (models often fence JSON), else the text."""
    m = _FENCE.match(text)
    return m.group(1) if m else text


def count_phrase(text: str, phrase: str) -> int:
    """Whole-word, case-insensitive occurrences of `phrase` in `text`."""
    if not phrase.strip():
        return 0
    pattern = r"(?<![\w])" + r"\s+".join(map(re.escape, phrase.split())) + r"(?![\w])"
    return len(re.findall(pattern, text, flags=re.I))


# Function words that carry no task content. Used to pick meaningful keywords from an instruction
# and by the elimination rule that drops responses made only of punctuation and such words.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself
him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most
mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same shan't
she she'd she'll she's should shouldn't so some such than that that's the their theirs them themselves then
there there's these they they'd they'll they're they've this those through to too under until up very was
wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while who who's
whom why why's with won't would wouldn't you you'd you'll you're you've your yours yourself yourselves
also just may might must shall will yes ok okay oh um uh well hmm etc via per
""".split())


def content_words(text: str) -> list[str]:
    """Lower-cased words that are not stop words, in order of first appearance, without repeats."""
    seen: dict[str, None] = {}
    for w in words(text.lower()):
        if w not in STOP_WORDS and not w.isdigit():
            seen.setdefault(w, None)
    return list(seen)
