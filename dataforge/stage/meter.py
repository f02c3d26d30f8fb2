"""`MeteredLLM`: the model as a stage sees it, counting what the stage asked of it.

Why: the runner needs to know, for every stage alike, how many requests were sent, how many failed
and why (a run where most failed and nothing came out must say so and exit non-zero), and what they
cost. Counting here, at the one boundary every request crosses, means no stage counts for itself.

Requests are counted per *operation*: the name a stage gives a step with ``with operation("answer"):``
(a context variable, so concurrent tasks keep their own), else the prompt template the request was
rendered from (``evol_deepen``, ``answer``, ``judge_alignment``: what users recognise, with no stage
code), else the stage's name.

A `Budget` (see `budget`) is enforced here too: once the job has spent it, a new request waits until
the requests already on their way have come back (their work gets journaled), then raises
`BudgetReached` instead of being sent.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from contextvars import ContextVar
from typing import Any, Awaitable, Iterator

from ..llm import LLM, Completion, GenParams, LLMError, Usage
from ..llm.base import WrappedLLM
from ..prompts import RenderedPrompt
from .budget import Budget, BudgetReached
from .summary import Tokens

_OPERATION: ContextVar[str | None] = ContextVar("dataforge_operation", default=None)
_TALLY: ContextVar[list[int] | None] = ContextVar("dataforge_tally", default=None)


@contextmanager
def operation(name: str) -> Iterator[None]:
    """Count the requests made inside this block (and the tasks it starts) under `name`."""
    token = _OPERATION.set(name)
    try:
        yield
    finally:
        _OPERATION.reset(token)


@contextmanager
def tally() -> Iterator[list[int]]:
    """``[n]``: the requests made by the current task inside this block (e.g. a speculative step, to
    report what a discarded one cost). Tasks started inside inherit it."""
    counter = [0]
    token = _TALLY.set(counter)
    try:
        yield counter
    finally:
        _TALLY.reset(token)


def _cause(exc: BaseException) -> str:
    """One line that names why a request failed (messages are already free of credentials)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


@dataclass
class _Counts:
    """What a stage's requests cost so far; shared by every model the stage talks to (see `also`)."""

    by_operation: dict[str, Tokens] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    budget: Budget | None = None
    stopped: str | None = None  # why the budget stopped the run
    in_flight: int = 0
    drained: asyncio.Event | None = None
    request_seconds: float = 0.0  # summed over the requests sent (not cached)
    sent: int = 0
    durations: list[float] = field(default_factory=list)  # of the requests sent (the first 100,000), for the median


def _shared(name: str) -> property:
    return property(lambda self: getattr(self._counts, name), lambda self, v: setattr(self._counts, name, v))


class MeteredLLM(WrappedLLM):
    """Delegates every call to `inner` (the backend, usually behind the request cache) and counts it."""

    def __init__(self, inner: LLM, default_operation: str, budget: Budget | None = None):
        super().__init__(inner)
        self.default_operation = default_operation
        self._counts = _Counts(budget=budget if budget is not None and budget.limited else None)

    by_operation = _shared("by_operation")
    failures = _shared("failures")
    stopped = _shared("stopped")
    in_flight = _shared("in_flight")
    _drained = _shared("drained")
    request_seconds = _shared("request_seconds")
    sent = _shared("sent")
    durations = _shared("durations")

    def seconds_per_request(self) -> float | None:
        """The median time of a request sent: a request caught behind a one-off pause (a model loading in
        this process) does not move it."""
        return statistics.median(self.durations) if self.durations else None

    @property
    def budget(self) -> Budget | None:
        return self._counts.budget

    @budget.setter
    def budget(self, value: Budget | None) -> None:
        self._counts.budget = value if value is not None and value.limited else None

    def also(self, other: LLM) -> "MeteredLLM":
        """`other` (e.g. a separate judge model) metered into the same counts and budget as this one."""
        twin = MeteredLLM(other, self.default_operation)
        twin._counts = self._counts
        return twin

    usage = property(lambda self: self.inner.usage)  # type: ignore[assignment]

    async def generate(self, prompt: RenderedPrompt, params: GenParams = GenParams()) -> Completion:
        return await self._count(self.inner.generate(prompt, params), getattr(prompt, "name", None))

    async def chat(self, messages: list[dict[str, str]], params: GenParams = GenParams()) -> Completion:
        return await self._count(self.inner.chat(messages, params))

    async def complete(self, prompt: str, params: GenParams = GenParams()) -> Completion:
        return await self._count(self.inner.complete(prompt, params))

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    async def _stop_if_spent(self, call: Awaitable[Completion]) -> None:
        """Past the budget: wait for the requests on their way, then refuse this one."""
        if self.budget is None:
            return
        why = self.stopped or self.budget.reached(self.tokens())
        if why is None:
            return
        self.stopped = why
        if hasattr(call, "close"):
            call.close()  # the request coroutine was never started: close it quietly
        if self.in_flight:
            if self._drained is None:
                self._drained = asyncio.Event()
            await self._drained.wait()
        raise BudgetReached(why)

    async def _count(self, call: Awaitable[Completion], template: str | None = None) -> Completion:
        await self._stop_if_spent(call)
        tokens = self.by_operation.setdefault(_OPERATION.get() or template or self.default_operation, Tokens())
        tokens.requests += 1
        counter = _TALLY.get()
        if counter is not None:
            counter[0] += 1
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            comp = await call
        except LLMError as exc:
            tokens.failed += 1
            self.failures[_cause(exc)] += 1
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._drained is not None:
                self._drained.set()
        usage = comp.usage if isinstance(comp.usage, Usage) else Usage()
        if comp.cached:
            tokens.cached += 1
        else:
            took = time.perf_counter() - t0
            self.request_seconds += took
            self.sent += 1
            if len(self.durations) < 100_000:
                self.durations.append(took)
        tokens.prompt += usage.prompt_tokens
        tokens.completion += usage.completion_tokens
        return comp

    def absorb(self, by_operation: dict[str, Any], failures: dict[str, int]) -> None:
        """Add what another process's meter counted for this stage (a Ray worker running its work)."""
        for op, counted in by_operation.items():
            self.by_operation.setdefault(op, Tokens()).add(Tokens.model_validate(counted))
        self.failures.update(failures)

    def take(self) -> tuple[dict[str, Any], dict[str, int]]:
        """What was counted since the last `take`, then start counting afresh (a worker's per-batch report)."""
        counted = ({op: t.model_dump() for op, t in self.by_operation.items()}, dict(self.failures))
        self.by_operation, self.failures = {}, Counter()
        return counted

    def tokens(self) -> Tokens:
        """All operations together."""
        total = Tokens()
        for t in self.by_operation.values():
            total.add(t)
        return total
