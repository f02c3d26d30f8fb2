"""Rich progress bars with rate and ETA for anything that can take more than a second.

Bars go to stderr and switch themselves off when stderr is not a terminal (CI logs stay readable)
unless DATAFORGE_PROGRESS=1 forces them on.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


class _RateColumn(TextColumn):
    """Items per second, read from rich's own speed estimate."""

    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


def _enabled() -> bool:
    flag = os.environ.get("DATAFORGE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false")
    return sys.stderr.isatty()


class Bar:
    """Handle for one task: `advance(n)`, `status("pool=12 acc=40%")`, `total(n)`."""

    def __init__(self, progress: Progress | None, task_id: int | None):
        self._p, self._t = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def status(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._t, status=text)

    def total(self, total: float | None) -> None:
        if self._p is not None:
            self._p.update(self._t, total=total)


@contextmanager
def progress_bar(description: str, total: float | None = None, unit: str = "rec", *,
                 enabled: bool = True) -> Iterator[Bar]:
    """A bar on stderr; a silent stand-in when `enabled` is false (tests, a pipeline's inner stages) or
    bars are off (not a terminal, DATAFORGE_PROGRESS=0)."""
    if not enabled or not _enabled():
        yield Bar(None, None)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               _RateColumn(unit),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False) as p:
        tid = p.add_task(description, total=total, status="")
        yield Bar(p, tid)


class Stopwatch:
    """Wall seconds per phase of a long job (``with clock("dedup"): ...``), for its summary: where the
    time of a million-record run went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        import time

        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - t0, 3)
