"""The one interface every generator, judge and refiner uses to talk to a language model.

A backend implements two coroutines, `chat` and `complete`; `generate` picks the right one for a
`RenderedPrompt`. Backends are cheap to construct and load heavy resources lazily on first use.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal

from ..prompts import RenderedPrompt

Profile = Literal["chat", "fewshot"]


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters; part of the request-cache key."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # ask for JSON matching this schema (where supported)
    logprobs: int | None = None  # number of top log-probabilities per generated token, where supported

    def key(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "GenParams":
        from dataclasses import replace

        return replace(self, **changes)


@dataclass
class Choice:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" (cut off at max_tokens) | "error"
    # per generated token: {token: logprob} of the top alternatives (None where the backend has none)
    logprobs: list[dict[str, float]] | None = None
    # a reasoning model's thinking, taken out of `text` (see llm/reasoning.py); never part of the data
    reasoning: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cached: int = 0
    errors: int = 0
    retries: int = 0  # extra attempts after 429/5xx/timeouts (counted, not hidden inside a client)

    def add(self, other: "Usage") -> None:
        for k in ("prompt_tokens", "completion_tokens", "requests", "cached", "errors", "retries"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    choices: list[Choice]
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    profile: str | None = None  # the profile of the prompt actually sent (chat after a refused /completions)

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    @property
    def truncated(self) -> bool:
        return bool(self.choices) and self.choices[0].truncated


class LLMError(Exception):
    """A request that failed for good (after retries); carries the last cause."""


class EndpointRefused(LLMError):
    """The server refuses raw completions (hosted chat APIs do): `generate` re-sends the prompt as chat."""

    reason, status, attempts = "endpoint_refused", None, 1


class LLM(ABC):
    """Backend interface. Subclasses set `backend` and `model` and implement `chat` and `complete`."""

    backend: str = "abstract"
    model: str = ""

    def __init__(self) -> None:
        self.usage = Usage()

    @property
    def model_id(self) -> str:
        """`backend:model`, as stored in `lineage.model`."""
        return f"{self.backend}:{self.model}"

    @property
    def profile(self) -> Profile:
        """Which prompt profile suits this model: small models get few-shot completion prompts."""
        return self.profile_decision.profile  # type: ignore[return-value]

    @profile.setter
    def profile(self, value: Profile) -> None:
        from .profile import Decision

        self._decision = Decision(value, "set by the caller")

    @property
    def profile_decision(self):
        """The profile and the evidence it rests on (`llm/profile.py`), decided once, on first use."""
        decision = getattr(self, "_decision", None)
        if decision is None:
            decision = self._decision = self._decide_profile()
        return decision

    def _decide_profile(self):
        from .profile import Decision

        return Decision("chat", "default")

    def switch_to_chat(self, why: str) -> None:
        """Fall back to chat prompts for the rest of the run (e.g. the server refused /completions)."""
        from .profile import Decision

        if self.profile != "chat":
            import logging

            logging.getLogger("dataforge.llm").warning("%s: %s; switching to chat prompts for the rest of the run",
                                                       self.model_id, why)
        self._decision = Decision("chat", why)

    @abstractmethod
    async def chat(self, messages: list[dict[str, str]], params: GenParams = GenParams()) -> Completion: ...

    @abstractmethod
    async def complete(self, prompt: str, params: GenParams = GenParams()) -> Completion: ...

    async def generate(self, prompt: RenderedPrompt, params: GenParams = GenParams()) -> Completion:
        """Send a rendered template: chat messages for chat profiles, raw text for few-shot ones.
        The template's stop sequences are added to the params'. A server that refuses raw
        completions gets the template's chat version instead (`Completion.profile` says which went)."""
        if not prompt.is_chat:
            try:
                comp = await self.complete(prompt.text, _with_stops(params, prompt))
                comp.profile = prompt.profile
                return comp
            except EndpointRefused as exc:
                self.switch_to_chat(str(exc))
                prompt = prompt.as_profile("chat")
        comp = await self.chat(prompt.messages, _with_stops(params, prompt))
        comp.profile = prompt.profile
        return comp

    async def generate_many(self, prompts: Iterable[RenderedPrompt], params: GenParams = GenParams()) -> list[Completion]:
        """Concurrently; the backend bounds how many are in flight."""
        return list(await asyncio.gather(*(self.generate(p, params) for p in prompts)))

    async def aclose(self) -> None:
        """Release connections/models; safe to call twice."""

    def describe(self) -> dict[str, Any]:
        d = self.profile_decision
        return {"backend": self.backend, "model": self.model, "profile": d.profile, "profile_reason": d.reason}


def _with_stops(params: GenParams, prompt: RenderedPrompt) -> GenParams:
    if not prompt.stop:
        return params
    return params.replace(stop=tuple(dict.fromkeys((*params.stop, *prompt.stop))))


class WrappedLLM(LLM):
    """A model that adds something around another one (the request cache, a stage's meter) and is
    otherwise that one: same backend, model, profile and extras (`resolve_model`, `cfg`, ...)."""

    def __init__(self, inner: LLM):
        self.inner = inner  # `usage` is the wrapper's to define: its own counter, or the inner one's

    backend = property(lambda self: self.inner.backend)  # type: ignore[assignment]
    model = property(lambda self: self.inner.model)  # type: ignore[assignment]

    @property
    def profile(self):  # type: ignore[override]
        return self.inner.profile

    @profile.setter
    def profile(self, value):  # type: ignore[override]
        self.inner.profile = value

    @property
    def profile_decision(self):  # type: ignore[override]
        return self.inner.profile_decision

    def switch_to_chat(self, why: str) -> None:
        self.inner.switch_to_chat(why)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def aclose(self) -> None:
        await self.inner.aclose()
