"""The append-only journal long runs write finished work to, so a killed run resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataforgeError
from ..records import Record


def repair_tail(path: Path) -> int:
    """Cut a partially written last line (no trailing newline) left by a crash; returns bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # walk back to the last newline
        pos = size
        chunk = 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            buf = fh.read(pos - start)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                fh.truncate(keep)
                return size - keep
            pos = start
        fh.truncate(0)
        return size


class Journal:
    """Append-only JSONL of finished work for long runs: each `append` is flushed, `sync` fsyncs.

    Reopening after a crash repairs the last line and `existing()` streams what was already done, so a
    resumed run skips finished work and never writes a record twice.
    """

    def __init__(self, path: str | os.PathLike, fsync_every: int = 64):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = repair_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._since_sync = 0
        self._fsync_every = fsync_every

    def existing(self) -> Iterator[dict[str, Any]]:
        """Every complete entry already in the journal (as dicts)."""
        with open(self.path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    yield json.loads(raw)
                except ValueError as exc:  # only a damaged disk or a hand edit gets here
                    raise DataforgeError(f"{self.path}:{lineno}: damaged journal entry ({exc}); "
                                         "delete that line (its work will be redone) and resume") from exc

    def existing_records(self) -> Iterator[Record]:
        for obj in self.existing():
            yield Record.model_validate(obj)

    def append(self, item: Record | dict[str, Any]) -> None:
        line = item.model_dump_json() if isinstance(item, Record) else json.dumps(item, ensure_ascii=False, default=str)
        self._fh.write(line + "\n")
        self._fh.flush()
        self._since_sync += 1
        if self._since_sync >= self._fsync_every:
            self.sync()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._since_sync = 0

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
