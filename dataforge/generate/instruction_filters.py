"""The Self-Instruct heuristics that decide whether a generated instruction enters the pool.

Each rule returns a short reason string when it rejects, so every drop is counted by reason. The
rules are those of the Self-Instruct/Alpaca bootstrap scripts: word count (more than 3, at most 150),
a whole-word keyword blacklist (tasks a text-only model cannot do), "Write a program" openers (the
model's favourite way of rephrasing an existing task), a first character that is punctuation or not
ASCII, and last and most expensive the ROUGE-L novelty check against the pool (`novelty.py`).
One deliberate difference: the original `str.capitalize()` lowercases everything after the first
letter ("Python" -> "python"); we only collapse whitespace, so names and code survive.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from .novelty import DEFAULT_THRESHOLD, NoveltyIndex

# the Alpaca list (the Self-Instruct list plus media words); plurals are spelled out as the originals do,
# because matching is whole-word
DEFAULT_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)

REASONS = ("empty", "too_short", "too_long", "blacklisted_keyword", "write_a_program",
           "starts_with_punctuation", "starts_with_non_ascii", "too_similar")


def normalize_instruction(text: str) -> str:
    """Collapse runs of whitespace and strip: what the original does before its checks."""
    return re.sub(r"\s+", " ", text).strip()


def compile_blacklist(words: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive whole-word pattern (`\\bword\\b`) for all blacklisted words/phrases."""
    words = [w.strip() for w in words if w.strip()]
    if not words:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


class Verdict(NamedTuple):
    kept: bool
    reason: str | None = None  # one of REASONS when dropped
    detail: str | None = None  # e.g. the matched keyword, or the too-similar pool instruction
    score: float | None = None  # ROUGE-L max when the novelty check ran


@dataclass
class FilterConfig:
    min_words: int = 3  # an instruction needs MORE than this many words
    max_words: int = 150  # and at most this many
    blacklist: tuple[str, ...] = DEFAULT_BLACKLIST
    banned_prefixes: tuple[str, ...] = ("Write a program",)
    rouge_threshold: float = DEFAULT_THRESHOLD  # keep iff max ROUGE-L F against the pool <= this
    check_novelty: bool = True


def heuristic_reason(text: str, cfg: FilterConfig, blacklist: re.Pattern[str] | None) -> tuple[str | None, str | None]:
    """(reason, detail) for the first cheap rule `text` breaks, or (None, None)."""
    if not text:
        return "empty", None
    words = len(text.split())
    if words <= cfg.min_words:
        return "too_short", f"{words} words"
    if words > cfg.max_words:
        return "too_long", f"{words} words"
    if blacklist is not None:
        m = blacklist.search(text)
        if m:
            return "blacklisted_keyword", m.group(0).lower()
    for prefix in cfg.banned_prefixes:
        if text.startswith(prefix):
            return "write_a_program", prefix
    if text[0] in string.punctuation:
        return "starts_with_punctuation", text[0]
    if not text[0].isascii():
        return "starts_with_non_ascii", text[0]
    return None, None


@dataclass
class InstructionFilter:
    """Stateful filter: owns the novelty pool and counts every decision by reason.

    >>> f = InstructionFilter(seeds=["Give three tips for staying healthy."])
    >>> f("Draw a picture of a cat.").reason
    'blacklisted_keyword'
    >>> f("Give three tips for staying healthy!").reason
    'too_similar'
    >>> f("Summarise the plot twists of a mystery novel.").kept, f.counts["kept"]
    (False, 0)
    """

    config: FilterConfig = field(default_factory=FilterConfig)
    seeds: Sequence[str] = ()
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._blacklist = compile_blacklist(self.config.blacklist)
        self.novelty = NoveltyIndex(threshold=self.config.rouge_threshold)
        for s in self.seeds:
            self.novelty.add(s)

    def __call__(self, instruction: str) -> Verdict:
        """Check one (normalised) instruction; if kept it joins the pool, as in Self-Instruct."""
        text = normalize_instruction(instruction)
        reason, detail = heuristic_reason(text, self.config, self._blacklist)
        verdict: Verdict
        if reason:
            verdict = Verdict(False, reason, detail)
        elif self.config.check_novelty:
            res = self.novelty.add_if_novel(text)
            verdict = Verdict(True, None, None, res.max_score) if res.kept else \
                Verdict(False, "too_similar", res.most_similar, res.max_score)
        else:
            self.novelty.add(text)
            verdict = Verdict(True)
        self.counts["kept" if verdict.kept else verdict.reason] += 1
        return verdict

    def add_to_pool(self, instruction: str) -> None:
        """Put an instruction into the novelty pool without checking (seeds, resumed work)."""
        self.novelty.add(normalize_instruction(instruction))

    @property
    def rejected(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k != "kept"}
