"""`RowFile`: a fixed-width numeric matrix on disk (one row per record), written by row number and read
in windows through short-lived memory maps.

Why: the stages that decide over the whole corpus (the gate's dedup, balance's topics) need an embedding
and a MinHash signature per record, a million records' worth being gigabytes. On disk they cost no
memory; every read maps only the rows it needs and unmaps them again, so the process's resident memory
stays bounded by the window, not by the corpus.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

WINDOW_BYTES = 32 << 20  # rows mapped at once by `windows`


class Rows(Protocol):
    """What the passes over per-record matrices use: a `RowFile`, or an `ArrayRows` for small inputs."""

    n: int
    width: int

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def gather(self, idx: np.ndarray | list[int]) -> np.ndarray: ...

    def write(self, rows: np.ndarray, at: np.ndarray | list[int]) -> None: ...


class ArrayRows:
    """An in-memory matrix with `RowFile`'s interface (small inputs, tests)."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.n, self.width = array.shape

    @classmethod
    def empty(cls, n: int, width: int, dtype: np.dtype | str = np.float32) -> "ArrayRows":
        return cls(np.zeros((n, width), dtype))

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def gather(self, idx: np.ndarray | list[int]) -> np.ndarray:
        return self.array[np.asarray(idx, dtype=np.int64)]

    def write(self, rows: np.ndarray, at: np.ndarray | list[int]) -> None:
        self.array[np.asarray(at, dtype=np.int64)] = rows


class RowFile:
    """`n` rows of `width` values of `dtype` in `path` (created sparse, zero-filled)."""

    def __init__(self, path: str | os.PathLike, n: int, width: int, dtype: np.dtype | str = np.float32):
        self.path, self.n, self.width, self.dtype = Path(path), int(n), int(width), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as fh:
            fh.truncate(self.n * self.row_bytes)

    @property
    def row_bytes(self) -> int:
        return self.width * self.dtype.itemsize

    def _map(self, mode: str, start: int = 0, stop: int | None = None) -> np.memmap:
        stop = self.n if stop is None else stop
        return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=start * self.row_bytes,
                         shape=(stop - start, self.width))

    def write(self, rows: np.ndarray, at: np.ndarray | list[int]) -> None:
        """Row `at[k]` := `rows[k]`."""
        at = np.asarray(at, dtype=np.int64)
        if not len(at):
            return
        lo, hi = int(at.min()), int(at.max()) + 1
        mm = self._map("r+", lo, hi)
        mm[at - lo] = rows
        mm.flush()
        del mm

    def append(self, rows: np.ndarray) -> None:
        """Add rows at the end (the file grows)."""
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        with open(self.path, "r+b") as fh:
            fh.seek(self.n * self.row_bytes)
            fh.write(data.tobytes())
        self.n += len(data)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1, copied into memory."""
        if stop <= start:
            return np.zeros((0, self.width), self.dtype)
        mm = self._map("r", start, stop)
        out = np.array(mm)
        del mm
        return out

    def gather(self, idx: np.ndarray | list[int]) -> np.ndarray:
        """Rows `idx` (any order, repeats allowed), copied into memory. The file is mapped a window of
        about `WINDOW_BYTES` at a time: a sample spread over a big file (balance's clustering fit) would
        otherwise map and touch all of it, and every touched page counts in the process's memory."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.width), self.dtype)
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        span = max(1, WINDOW_BYTES // max(self.row_bytes, 1))
        k = 0
        while k < len(srt):
            lo = int(srt[k])
            j = int(np.searchsorted(srt, lo + span, side="left"))
            mm = self._map("r", lo, int(srt[j - 1]) + 1)
            out[order[k:j]] = mm[srt[k:j] - lo]
            del mm
            k = j
        return out

    def windows(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) in consecutive windows of about `WINDOW_BYTES`."""
        rows = rows or max(1, WINDOW_BYTES // max(self.row_bytes, 1))
        for start in range(0, self.n, rows):
            yield start, self.read(start, min(self.n, start + rows))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
