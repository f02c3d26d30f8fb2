"""The loop of a record-parallel stage that asks the model about each record on its own (converse, pairs).

Up to `max_in_flight` records are worked on at once; each finished one is journaled as an entry with its
record's ``id`` (a killed run resumes without asking again), and results are written in input order, a
chunk at a time, so the output does not depend on which reply came first and memory stays bounded.
When a budget stops the run mid-chunk, the chunk's finished records are written (in input order) before
the stop goes on to the runner, so the output holds everything that was finished.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

if TYPE_CHECKING:
    from ..records import Record
    from .base import StageContext


async def gather_or_cancel(coros: list[Awaitable[Any]]) -> list[Any]:
    """gather, but when one fails the others are cancelled before the error propagates, so nothing
    writes to the journal after the run has stopped."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def each_record(ctx: "StageContext", records: Iterable["Record"],
                      work: Callable[["Record"], Awaitable[dict[str, Any]]],
                      write: Callable[["Record", dict[str, Any]], None], *, max_in_flight: int, label: str,
                      unit: str = "rec") -> None:
    """`work(record)` -> a journal entry (with the record's ``id``) for every record not already in the
    journal; `write(record, entry)` in input order."""
    from .budget import BudgetReached

    done = {e["id"]: e for e in ctx.journal.entries}
    sem = asyncio.Semaphore(max_in_flight)
    chunk: list["Record"] = []
    finished: dict[str, dict[str, Any]] = {}  # entries of the current chunk, as they finish
    with ctx.bar(label, unit=unit) as bar:

        async def one(r: "Record") -> dict[str, Any]:
            entry = done.get(r.id)
            if entry is None:
                async with sem:
                    entry = await work(r)
                ctx.journal.append(entry)
            finished[r.id] = entry
            bar.advance()
            return entry

        async def flush() -> None:
            try:
                entries = await gather_or_cancel([one(r) for r in chunk])
            except BudgetReached:
                for r in chunk:
                    if r.id in finished:
                        write(r, finished[r.id])
                ctx.journal.sync()
                raise
            for r, entry in zip(chunk, entries):
                write(r, entry)
            ctx.journal.sync()
            chunk.clear()
            finished.clear()

        for r in records:
            chunk.append(r)
            if len(chunk) >= 4 * max_in_flight:
                await flush()
        await flush()
