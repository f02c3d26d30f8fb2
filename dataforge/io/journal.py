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
    resumed run skips finished work and never writes a record twice. `append` returns the byte offset of
    the line it wrote and `scan` yields entries with theirs, so a stage can come back to one entry
    (`JournalReader`) instead of holding them all in memory.
    """

    def __init__(self, path: str | os.PathLike, fsync_every: int = 64):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = repair_tail(self.path)
        self._fh = open(self.path, "ab")
        self._end = self.path.stat().st_size  # where the next line starts
        self._since_sync = 0
        self._fsync_every = fsync_every

    @property
    def size(self) -> int:
        """Bytes in the journal, counting what was appended and not yet synced."""
        return self._end

    def scan(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """(byte offset, entry) for every complete entry between `start` and `end` (default: all)."""
        self._fh.flush()
        with open(self.path, "rb") as fh:
            fh.seek(start)
            pos, read = start, 0
            while end is None or pos < end:
                raw = fh.readline()
                if not raw:
                    break
                offset, pos, read = pos, pos + len(raw), read + 1
                if not raw.strip():
                    continue
                try:
                    yield offset, json.loads(raw)
                except ValueError as exc:  # only a damaged disk or a hand edit gets here
                    with open(self.path, "rb") as again:
                        lineno = again.read(start).count(b"\n") + read
                    raise DataforgeError(f"{self.path}:{lineno}: damaged journal entry ({exc}); "
                                         "delete that line (its work will be redone) and resume") from exc

    def existing(self) -> Iterator[dict[str, Any]]:
        """Every complete entry already in the journal (as dicts)."""
        for _, entry in self.scan():
            yield entry

    def existing_records(self) -> Iterator[Record]:
        for obj in self.existing():
            yield Record.model_validate(obj)

    def append(self, item: Record | dict[str, Any]) -> int:
        """Write one entry (flushed); returns the byte offset its line starts at."""
        line = item.model_dump_json() if isinstance(item, Record) else json.dumps(item, ensure_ascii=False, default=str)
        data = (line + "\n").encode("utf-8")
        offset = self._end
        self._fh.write(data)
        self._fh.flush()
        self._end += len(data)
        self._since_sync += 1
        if self._since_sync >= self._fsync_every:
            self.sync()
        return offset

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


class JournalReader:
    """Reads single entries of a journal by the byte offset `Journal.append` / `scan` gave for them.
    Reading entries in ascending offsets is a forward walk through the file (one buffered handle)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = open(self.path, "rb")

    def at(self, offset: int) -> dict[str, Any]:
        if self._fh.tell() != offset:
            self._fh.seek(offset)
        raw = self._fh.readline()
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DataforgeError(f"{self.path}: no journal entry at byte {offset} ({exc})") from exc

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JournalReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
