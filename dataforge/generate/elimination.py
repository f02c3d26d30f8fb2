"""Elimination of failed evolutions: the four rules of the Evol-Instruct paper, each with its reason.

1. ``no_information_gain`` — the evolved instruction asks for nothing new over its parent. Judged by
   the model (template ``judge_info_gain``) where it can judge; the embedding similarity of the two
   instructions decides when the model's verdict is unusable or the model is too small to ask.
2. ``sorry_short_response`` — the answer contains "sorry" and is short (the model found it too hard).
3. ``stopwords_only_response`` — the answer is only punctuation and stop words.
4. ``copied_evolving_prompt`` — the evolved instruction copies words of the evolving prompt: one of
   the marker phrases of the templates (a data file, ``prompts/evol_leak_markers.txt``, so it grows
   with the templates), or a run of words from the template's own text or worked examples.

Cheap text rules run first so no judge or answer request is spent on an evolution already lost.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

from pydantic import BaseModel, Field

from ..constraints.text import STOP_WORDS, content_words, word_count, words
from ..paths import resource_dir
from ..stage import Cli

if TYPE_CHECKING:
    from ..llm import LLM

NO_INFO_GAIN = "no_information_gain"
SORRY_SHORT = "sorry_short_response"
STOPWORDS_ONLY = "stopwords_only_response"
COPIED_PROMPT = "copied_evolving_prompt"
EMPTY = "empty_evolution"  # the model returned no usable instruction at all (counted apart from the four)
LLM_FAILED = "llm_request_failed"  # a request failed for good after retries; the parent is retried next round
RULES = (NO_INFO_GAIN, SORRY_SHORT, STOPWORDS_ONLY, COPIED_PROMPT)

MARKERS_FILE = "evol_leak_markers.txt"
JudgeMode = Literal["auto", "model", "embedding", "off"]


class EliminationConfig(BaseModel):
    """Thresholds of the four rules."""

    judge: Annotated[JudgeMode, Cli("--judge", panel="Evolution")] = Field("auto", description="info-gain judge: model (ask the LLM), embedding (similarity "
                             "only), auto (model for chat-profile models, embedding for small few-shot ones), off")
    similarity_threshold: float = Field(0.96, description="embedding cosine at or above which the evolved "
                                        "instruction counts as no information gain")
    sorry_max_words: int = Field(80, description="a response with 'sorry' and fewer words than this fails rule 2")
    min_instruction_words: int = Field(3, description="evolved instructions shorter than this count as empty")
    copy_ngram: int = Field(6, ge=0, description="this many consecutive words of the evolving prompt (not of "
                            "the parent) in the evolved instruction count as copying (rule 4); 0 turns it off")


@functools.lru_cache(maxsize=8)
def load_markers(path: str | None = None) -> tuple[str, ...]:
    """Lower-cased leak markers from the shipped data file (or `path`)."""
    p = Path(path) if path else resource_dir("prompts") / MARKERS_FILE
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s or s.startswith("# ") or s == "#":
            continue
        out.append(s.lower())
    return tuple(out)


def _norm(text: str) -> str:
    return " ".join(words(text.lower()))


# ------------------------------------------------------------------ the text rules (pure functions)

def copied_marker(instruction: str, markers: tuple[str, ...] | None = None) -> str | None:
    """Rule 4: the first evolving-prompt marker found in the evolved instruction, else None."""
    low = instruction.lower()
    for m in markers if markers is not None else load_markers():
        if m in low:
            return m
    return None


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def copied_prompt_words(child: str, prompt: str, parent: str, n: int = 6) -> str | None:
    """Rule 4, word level: `n` consecutive words of the evolving prompt (its instructions or worked
    examples, not the parent task) reappearing in the evolved instruction. Small few-shot models
    otherwise paste an example's data into the new task."""
    own = _ngrams(prompt, n) - _ngrams(parent, n)
    hit = sorted(_ngrams(child, n) & own)
    return " ".join(hit[0]) if hit else None


def is_sorry_short(response: str, max_words: int = 80) -> bool:
    """Rule 2: 'sorry' anywhere (any case) in a response of fewer than `max_words` words."""
    return "sorry" in response.lower() and word_count(response) < max_words


def is_stopwords_only(response: str) -> bool:
    """Rule 3: nothing but punctuation, whitespace and stop words (an empty response included)."""
    return all(w.lower() in STOP_WORDS for w in words(response))


def is_unchanged(parent: str, child: str) -> bool:
    """Same words in the same order: no information gain, whatever a judge would say."""
    return _norm(parent) == _norm(child)


def adds_no_words(parent: str, child: str) -> bool:
    """Every content word of the child is already in the parent: a shortened or reshuffled parent
    asks for nothing new (cheaper and surer than any judge)."""
    return set(content_words(child)) <= set(content_words(parent))


_VERDICT = re.compile(r"\b(not\s+equal|different|equal|same)\b", re.I)


def parse_verdict(text: str) -> bool | None:
    """Judge reply -> True (information gain), False (none), None (unreadable)."""
    m = _VERDICT.search(text or "")
    if not m:
        return None
    word = m.group(1).lower()
    return word.startswith("not") or word == "different"


# ------------------------------------------------------------------ the eliminator

@dataclass
class Verdict:
    """Outcome of a rule: `reason` is None when the evolution survives; `how` says which judge decided."""

    reason: str | None
    how: str = ""
    score: float | None = None
    tokens: int = 0  # spent by the model judge

    @property
    def ok(self) -> bool:
        return self.reason is None


class Eliminator:
    """Applies the rules to one evolution at a time. Needs the LLM only for the model judge and the
    embedder (created lazily by `embedder_factory`) only when similarity has to decide."""

    def __init__(self, cfg: EliminationConfig | None = None, *, llm: "LLM | None" = None,
                 embedder_factory: Callable[[], Any] | None = None, judge_params: Any = None):
        self.cfg = cfg or EliminationConfig()
        self.llm = llm
        self._embedder_factory = embedder_factory
        self._embedder = None
        self.judge_params = judge_params
        self.markers = load_markers()

    @property
    def judge_mode(self) -> str:
        mode = self.cfg.judge
        if mode == "auto":
            return "model" if self.llm is not None and getattr(self.llm, "profile", "chat") == "chat" else "embedding"
        return mode

    # rule 4 (+ empty): before any further request
    def check_instruction(self, child: str, prompt: str | None = None, parent: str = "") -> Verdict:
        """Empty, or copied from the evolving prompt (marker phrases; with `prompt`, also a run of
        `copy_ngram` words of the prompt that the parent does not contain)."""
        if len(words(child)) < self.cfg.min_instruction_words:
            return Verdict(EMPTY, "length")
        marker = copied_marker(child, self.markers)
        if marker:
            return Verdict(COPIED_PROMPT, f"marker {marker!r}")
        if prompt and self.cfg.copy_ngram:
            run = copied_prompt_words(child, prompt, parent, self.cfg.copy_ngram)
            if run:
                return Verdict(COPIED_PROMPT, f"copied {run!r}")
        return Verdict(None)

    # rule 1
    async def check_info_gain(self, parent: str, child: str, *, seed: int | None = None) -> Verdict:
        if is_unchanged(parent, child):
            return Verdict(NO_INFO_GAIN, "identical")
        if adds_no_words(parent, child):
            return Verdict(NO_INFO_GAIN, "no new words")
        mode = self.judge_mode
        if mode == "off":
            return Verdict(None, "off")
        tokens = 0
        if mode == "model":
            gain, tokens = await self._model_judge(parent, child, seed)
            if gain is not None:
                return Verdict(None if gain else NO_INFO_GAIN, "model", tokens=tokens)
        sim = self.similarity(parent, child)
        if sim is None:
            return Verdict(None, "no-judge", tokens=tokens)
        return Verdict(NO_INFO_GAIN if sim >= self.cfg.similarity_threshold else None, "embedding", sim, tokens)

    async def _model_judge(self, parent: str, child: str, seed: int | None) -> tuple[bool | None, int]:
        from ..llm import GenParams, LLMError
        from ..prompts import render

        prompt = render("judge_info_gain", self.llm.profile, parent=parent, child=child)
        params = self.judge_params or GenParams(temperature=0.0, max_tokens=8)
        if seed is not None:
            params = params.replace(seed=seed)
        try:
            completion = await self.llm.generate(prompt, params)
        except LLMError:
            return None, 0
        return parse_verdict(completion.text), completion.usage.total_tokens

    def similarity(self, a: str, b: str) -> float | None:
        if self._embedder is None:
            if self._embedder_factory is None:
                return None
            self._embedder = self._embedder_factory()
        vecs = self._embedder.encode([a, b])
        return float((vecs[0] * vecs[1]).sum())

    # rules 2 and 3: after the answer
    def check_response(self, response: str) -> Verdict:
        if is_stopwords_only(response):
            return Verdict(STOPWORDS_ONLY, "text")
        if is_sorry_short(response, self.cfg.sorry_max_words):
            return Verdict(SORRY_SHORT, "text")
        return Verdict(None)


def default_embedder_factory(cache_dir: str | None = None) -> Callable[[], Any]:
    """Lazy MiniLM embedder from the quality package (loaded only if similarity must decide)."""

    def make() -> Any:
        from ..quality.embed import get_embedder

        return get_embedder(cache_dir=cache_dir)

    return make
