"""Atomic writers: a hidden temp file beside the target, fsynced and renamed into place, so readers
see the old file or the whole new one, never a part. `RecordWriter` streams Records in any output
format (gzip for ``*.gz`` JSONL); `atomic_open` does the same for any small file."""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from ..errors import DataforgeError
from ..records import Record
from .formats import OUT_FORMATS, ROW_FORMATS, parquet_schema, to_flat


def _default_mode() -> int:
    """0o666 less the process umask: what `open()` would have given, unlike mkstemp's private 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_mode()  # read once at import: umask() is process-wide and not thread-safe


def _atomic_tmp(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _FILE_MODE)
    return fd, tmp


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RecordWriter:
    """Writes Records to `path` atomically: readers never see a half-written file.

    Rows go to a hidden temp file in the same folder; `close()` fsyncs and renames it over `path`, and
    an exception inside the ``with`` block (or `abort()`) deletes it, leaving any earlier `path` untouched.

    >>> with RecordWriter("out.jsonl", fmt="alpaca") as w:  # doctest: +SKIP
    ...     w.write(record)
    """

    def __init__(self, path: str | os.PathLike, fmt: str = "record", batch_size: int = 1024):
        if fmt not in OUT_FORMATS:
            raise DataforgeError(f"unknown output format {fmt!r}; choose from {', '.join(OUT_FORMATS)}")
        self.path = Path(path)
        if self.path.is_dir():
            raise DataforgeError(f"{self.path}: is a folder; give an output file name")
        self.fmt = fmt
        self.count = 0
        fd, self._tmp = _atomic_tmp(self.path)
        self._batch: list[dict[str, Any]] = []
        self._batch_size = batch_size
        self._pq = None
        self._closed = False
        self._raw: IO[bytes] | None = None  # the file under a gzip stream
        if fmt == "parquet":
            os.close(fd)
            self._fh = None
            if self.path.suffix.lower() == ".gz":
                self.abort()
                raise DataforgeError(f"{self.path}: Parquet compresses itself; name the output *.parquet")
        elif self.path.suffix.lower() == ".gz":
            self._raw = os.fdopen(fd, "wb")
            # mtime=0: the same records always give the same bytes
            gz = gzip.GzipFile(filename="", fileobj=self._raw, mode="wb", mtime=0)
            self._fh = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
        else:
            self._fh = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, record: Record) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: writer already closed")
        if self.fmt == "parquet":
            self._batch.append(to_flat(record))
            if len(self._batch) >= self._batch_size:
                self._flush_parquet()
        else:
            try:
                if self.fmt == "record":
                    line = record.model_dump_json()
                else:
                    line = json.dumps(ROW_FORMATS[self.fmt](record), ensure_ascii=False)
                line.encode("utf-8")
            except (ValueError, UnicodeError) as exc:  # pydantic's serialisation error is a ValueError
                raise DataforgeError(f"{self.path}: record {record.id} cannot be written as UTF-8 JSON "
                                     f"(a lone surrogate in its text?): {exc}") from exc
            self._fh.write(line + "\n")
        self.count += 1

    def write_all(self, records: Iterable[Record]) -> int:
        for r in records:
            self.write(r)
        return self.count

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._pq is None:
            self._pq = pq.ParquetWriter(self._tmp, parquet_schema())
        if self._batch:
            self._pq.write_table(pa.Table.from_pylist(self._batch, schema=parquet_schema()))
            self._batch = []

    def close(self) -> None:
        """Finish: fsync the temp file and rename it over `path` (idempotent)."""
        if self._closed:
            return
        try:
            if self.fmt == "parquet":
                self._flush_parquet()  # also creates a valid empty file when nothing was written
                self._pq.close()
                with open(self._tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            elif self._raw is not None:
                self._fh.close()  # closes the gzip stream (writes its trailer), not the file under it
                self._raw.flush()
                os.fsync(self._raw.fileno())
                self._raw.close()
            else:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Throw the partial output away; `path` keeps whatever it had before."""
        self._closed = True
        try:
            if self._fh is not None and not self._fh.closed:
                self._fh.close()
            if self._raw is not None and not self._raw.closed:
                self._raw.close()
            if self._pq is not None:
                try:
                    self._pq.close()
                except Exception:
                    pass
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_records(path: str | os.PathLike, records: Iterable[Record], fmt: str = "record") -> int:
    with RecordWriter(path, fmt) as w:
        return w.write_all(records)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; on a clean exit fsync it, rename it over `path` and fsync the
    folder, so readers see the old file or the whole new one, never a part. On error the temp goes."""
    p = Path(path)
    fd, tmp = _atomic_tmp(p)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(p.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Small JSON documents (stats, manifests, state) written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
