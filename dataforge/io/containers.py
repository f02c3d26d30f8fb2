"""How items are stored in a file: JSON Lines, a JSON array, Parquet or a saved Hugging Face folder,
gzip or not, and which record format a JSON Lines file holds."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import IO

from ..errors import DataforgeError
from .formats import IN_FORMATS, detect_object_format


CONTAINERS = ("jsonl", "json-array", "parquet", "hf")
_LINE_SUFFIXES = (".jsonl", ".ndjson")
_BOM = b"\xef\xbb\xbf"


def _is_hf_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                           or (p / "state.json").exists())


_GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (OSError, EOFError, zlib.error)  # a damaged or truncated gzip stream


def _is_gzip(p: Path) -> bool:
    if p.suffix.lower() == ".gz":
        return True
    with open(p, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_bytes(p: Path) -> IO[bytes]:
    """The file's content as a binary stream, decompressed on the fly when it is gzip."""
    return gzip.open(p, "rb") if _is_gzip(p) else open(p, "rb")


def _suffix(p: Path) -> str:
    """The suffix that says what is inside: `.jsonl` for both `x.jsonl` and `x.jsonl.gz`."""
    return Path(p.stem).suffix.lower() if p.suffix.lower() == ".gz" else p.suffix.lower()


def detect_container(path: str | os.PathLike) -> str:
    """How the items are stored: ``jsonl``, ``json-array``, ``parquet`` or ``hf`` (see the module doc)."""
    p = Path(path)
    if p.is_dir():
        if _is_hf_dir(p):
            return "hf"
        raise DataforgeError(f"{p}: a folder that is not a saved Hugging Face dataset (no dataset_info.json)")
    if p.suffix.lower() == ".parquet":
        return "parquet"
    if _suffix(p) in _LINE_SUFFIXES:
        return "jsonl"
    try:
        with _open_bytes(p) as fh:
            head = fh.read(4096)
    except _READ_ERRORS as exc:
        raise DataforgeError(f"{p}: unreadable: {exc}") from exc
    if head.startswith(b"PAR1"):
        return "parquet"
    return "json-array" if head.removeprefix(_BOM).lstrip().startswith(b"[") else "jsonl"


def detect_format(path: str | os.PathLike) -> str:
    """Container + record format of a file: parquet, hf, json-array, or the first good JSONL line's format."""
    p = Path(path)
    container = detect_container(p)
    if container != "jsonl":
        return container
    try:
        with _open_bytes(p) as fh:
            for n, raw in enumerate(fh):
                if n >= 50:
                    break
                try:
                    fmt = detect_object_format(json.loads(raw.removeprefix(_BOM) if n == 0 else raw))
                except (ValueError, RecursionError):
                    continue
                if fmt:
                    return fmt
    except _READ_ERRORS as exc:
        raise DataforgeError(f"{p}: unreadable: {exc}") from exc
    raise DataforgeError(f"{p}: cannot tell the format from the first lines; pass --format "
                         f"({', '.join(IN_FORMATS[1:])})")


def check_input(p: Path) -> None:
    """A clear error for a missing or empty input, before any work starts."""
    if not p.exists():
        raise DataforgeError(f"{p}: no such file")
    if p.is_file() and p.stat().st_size == 0:
        raise DataforgeError(f"{p}: the file is empty")


def count_items(path: str | os.PathLike) -> int | None:
    """Cheap upper bound of the items in `path` for a progress total (lines, rows); None if unknown."""
    p = Path(path)
    try:
        container = detect_container(p)
        if container == "jsonl" and not _is_gzip(p):
            n, last = 0, b"\n"
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    n += chunk.count(b"\n")
                    last = chunk[-1:]
            return n + (last != b"\n")
        if container == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(p).metadata.num_rows
    except Exception:  # a progress total is a nicety; the reader reports the real problem
        return None
    return None
