"""Batches of pure-CPU `Work` on local worker processes, results in batch order.

Why: a streaming stage such as `decontaminate` spends about half its time reading and writing records and
half on its own per-record computation. Python runs one of those at a time, so on a machine with more than
one core the computation goes to worker processes while this process reads the next batches and writes
the finished ones. A few batches per worker are in flight at a time, so memory stays bounded; results
come back in the order the batches went out, so the output is the one an in-process run writes.

Workers are forked where the platform can (``spawn`` elsewhere): a spawned worker re-imports the caller's
main module, which breaks a script that calls a stage without an ``if __name__ == "__main__"`` guard. A
forked worker touches nothing of its parent's but the work it is given (pure Python and numpy: no
threads, clients or OpenMP pools), so the parent's threads and open clients do not matter. Each worker
calls the work's `open` once, then runs batch after batch.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

if TYPE_CHECKING:
    from .work import Work

_WORK: "Work | None" = None  # the work of this worker process
IN_FLIGHT_PER_WORKER = 2


def default_processes() -> int:
    """Worker processes when the user names none: one per core beyond the one this process reads and
    writes with (none on a single core: the work then runs here)."""
    return max(0, (os.cpu_count() or 1) - 1)


def _start(work: "Work") -> None:
    global _WORK
    work.open(None)
    _WORK = work


def _run(batch: Any) -> Any:
    assert _WORK is not None, "worker used before it was started"
    return _WORK.run(batch)


async def process_map(work: "Work", batches: Iterable[Any], processes: int) -> AsyncIterator[Any]:
    """`work.run` over `batches` in `processes` worker processes; results in batch order. A batch that
    fails raises its error here (the remaining batches are cancelled)."""
    work.prepare()
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(method), initializer=_start,
                               initargs=(work,))
    pending: deque[asyncio.Future[Any]] = deque()
    try:
        for batch in batches:
            pending.append(asyncio.wrap_future(pool.submit(_run, batch)))
            while len(pending) >= IN_FLIGHT_PER_WORKER * processes or (pending and pending[0].done()):
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
