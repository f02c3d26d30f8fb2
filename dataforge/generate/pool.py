"""A pool of new instructions that grows batch by batch until a target: the loop Self-Instruct's bootstrap
and Magpie share.

A batch is `per_batch` requests sent together; their candidates are filtered in request order (so the
novelty index and the result do not depend on which reply came first) and the batch becomes one journal
entry. Replaying the entries (`apply_batch`) rebuilds the pool exactly, so a resumed run equals an
uninterrupted one. The pool stops at the target, at a request limit, or after `patience` batches in a row
without a new instruction. Per-instruction follow-up work (classification, instances, answers) runs
through `each_task`, journaled one task at a time.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import Counter
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..stage.parallel import gather_or_cancel

if TYPE_CHECKING:
    from ..progress import Bar
    from ..stage import StageContext, StageJournal
    from .instruction_filters import InstructionFilter


class GrowingPool(ABC):
    """The new instructions so far (`tasks`), the filter's verdicts, and the requests that produced them.
    Subclasses send one request (`_one_request`) and turn a batch of replies into a journal entry
    (`_filter_batch`: ``{"kind": "batch", "batch", "kept", "rejected", "counts", "requests", "errors",
    "truncated"}``, kept items carrying an ``instruction``)."""

    filter: "InstructionFilter"

    def __init__(self, target: int, max_requests: int, patience: int, per_batch: int):
        self.target, self.max_requests, self.patience, self.per_batch = target, max_requests, patience, per_batch
        self.tasks: list[dict[str, Any]] = []  # accepted new instructions, in order
        self.rejected: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()  # filter decisions by reason
        self.requests = self.request_errors = self.truncated = self.batches_done = self.empty_streak = 0

    def apply_batch(self, e: dict[str, Any], live: bool = False) -> None:
        """Bring the state to 'after batch e'. Live, the filter already put the kept instructions into the
        novelty index; on replay they are added here, in the same order, so both end in the same state."""
        for task in e["kept"]:
            if not live:
                self.filter.add_to_pool(task["instruction"])
            self.tasks.append(task)
        self.rejected.extend(e.get("rejected", []))
        self.counts.update(e["counts"])
        self.requests += e["requests"]
        self.request_errors += e.get("errors", 0)
        self.truncated += e.get("truncated", 0)
        self.batches_done = e["batch"] + 1
        self.empty_streak = 0 if e["kept"] else self.empty_streak + 1

    async def grow(self, journal: "StageJournal", bar: "Bar") -> str:
        """Batches of requests until the target, the request limit or the patience is reached; why it stopped."""
        bar.advance(len(self.tasks))
        self._bar_status(bar)
        while True:
            if len(self.tasks) >= self.target:
                return "reached target"
            if self.requests >= self.max_requests:
                return f"max requests ({self.max_requests})"
            if self.empty_streak >= self.patience:
                return f"{self.patience} batches in a row without a new task"
            batch = self.batches_done
            results = await gather_or_cancel([self._one_request(batch, r) for r in range(self.per_batch)])
            entry = self._filter_batch(batch, results)
            before = len(self.tasks)
            journal.append(entry)
            journal.sync()
            self.apply_batch(entry, live=True)
            bar.advance(len(self.tasks) - before)
            self._bar_status(bar)

    def _bar_status(self, bar: "Bar") -> None:
        seen = sum(self.counts.values())
        rate = self.counts["kept"] / seen if seen else 0.0
        rejected = Counter({k: v for k, v in self.counts.items() if k not in ("kept", "not_needed")})
        top = ", ".join(f"{k} {v}" for k, v in rejected.most_common(3))
        bar.status(f"pool {self._size_text()} · accept {rate:.0%} · {top}")

    def _size_text(self) -> str:
        return str(len(self.tasks))

    async def each_task(self, ctx: "StageContext", what: str, done: dict[str, dict[str, Any]],
                        ask: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], max_in_flight: int) -> None:
        """One request per pool task not yet in `done`, `max_in_flight` at a time; each answer is journaled."""
        todo = [t for t in self.tasks if t["task_id"] not in done]
        sem = asyncio.Semaphore(max_in_flight)
        with ctx.bar(what, total=len(self.tasks), unit="task") as bar:
            bar.advance(len(self.tasks) - len(todo))

            async def one(task: dict[str, Any]) -> None:
                async with sem:
                    entry = await ask(task)
                ctx.journal.append(entry)
                done[task["task_id"]] = entry
                bar.advance()

            await gather_or_cancel([one(t) for t in todo])
        ctx.journal.sync()

    @abstractmethod
    async def _one_request(self, batch: int, request: int) -> dict[str, Any]:
        """One request of a batch; its reply as the filter wants it (never raises on a failed request)."""

    @abstractmethod
    def _filter_batch(self, batch: int, results: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch's journal entry: candidates filtered in request order."""
