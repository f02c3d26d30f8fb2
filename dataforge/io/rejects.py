"""Bad input items, kept: one JSON object per item (file, line, raw text, reason), counted by reason."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import IO, Any


class RejectSink:
    """Collects bad input lines into a JSONL file (created on first reject) and counts them by reason.

    Each run starts a fresh file (a stale one from an earlier run is removed) because a rerun reads its
    input again and so reproduces every reject; pass ``append=True`` to keep adding to an existing file.
    """

    def __init__(self, path: str | os.PathLike | None, append: bool = False):
        self.path = Path(path) if path else None
        self.counts: Counter[str] = Counter()
        self._fh: IO[str] | None = None
        if self.path is not None and not append:
            self.path.unlink(missing_ok=True)

    def add(self, file: str, line: int, raw: str | bytes, reason: str) -> None:
        key = reason.split(":", 1)[0]
        self.counts[key] += 1
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="backslashreplace")
        self._fh.write(json.dumps({"file": file, "line": line, "raw": raw, "reason": reason}, ensure_ascii=False) + "\n")
        self._fh.flush()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RejectSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
