"""`Work`: the record-parallel part of a stage, handed out in batches by a mapper.

Why: the gate and balance decide over the whole input (duplicates, topics), but most of their time goes
to per-record work (checks, judges, embeddings) whose result for a record depends on that record alone.
A stage builds one `Work` on the driver (with whatever global context the batches need, e.g. the
gate's alignment pool) and iterates ``ctx.map(work, batches)``; the mapper runs it here
(`LocalMapper`) or on Ray workers (`dataforge.pipeline.ray_executor.RayMapper`), returns the results in
batch order, and the stage keeps only the compact per-record state its global step needs. Stages never
know which mapper they got, so a Ray run writes what a local run writes.

A `Work` must be picklable (it travels to the workers); heavy things (models, clients) are made in
`open`, which runs once in each process that runs the work.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

if TYPE_CHECKING:
    from ..llm import LLM


class Work(ABC):
    """Per-batch work of a stage. Subclasses implement `run`; `open` loads what `run` needs."""

    #: Worker processes a `LocalMapper` spreads the batches over (`dataforge.stage.procs`), for pure-CPU work
    #: without a model whose batches cost far more than pickling them; 0 runs them here. Ray ignores it.
    processes: int = 0

    def uses_llm(self) -> bool:
        """Whether `open` needs a model (on Ray, each worker then opens a client to its endpoint)."""
        return False

    def prepare(self) -> None:
        """Runs on the driver before batches go to other processes (e.g. make a model export once)."""

    def open(self, llm: "LLM | None") -> None:
        """Load models and clients; called once per process before its first batch."""

    async def aclose(self) -> None:
        """Close what `open` opened beyond the model it was given (e.g. a judge's own client)."""

    @abstractmethod
    def run(self, batch: Any) -> Any:
        """The result for one batch (a coroutine where it calls a model); must be picklable."""


async def run_batch(work: Work, batch: Any) -> Any:
    result = work.run(batch)
    return await result if inspect.isawaitable(result) else result


class LocalMapper:
    """Runs work in this process, batch after batch, with the stage's own (metered) model."""

    def __init__(self, llm: "LLM | None" = None):
        self.llm = llm
        self.report: dict[str, Any] | None = None  # what a distributed mapper tells the summary

    async def map(self, work: Work, batches: Iterable[Any]) -> AsyncIterator[Any]:
        if work.processes > 0 and not work.uses_llm():
            from .procs import process_map

            async for result in process_map(work, batches, work.processes):
                yield result
            return
        work.open(self.llm if work.uses_llm() else None)
        try:
            for batch in batches:
                yield await run_batch(work, batch)
        finally:
            await work.aclose()
