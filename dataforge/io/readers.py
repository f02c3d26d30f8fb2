"""`read_records`: Records from any supported file, streaming. A bad item never aborts the run and
never disappears: it goes to a `RejectSink` with file, line, raw text and reason (``strict`` raises
instead, naming file and line)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from ..errors import DataforgeError
from ..records import Record
from .containers import _BOM, _READ_ERRORS, check_input, _open_bytes, detect_container, detect_format
from .formats import FLAT_JSON_COLUMNS, IN_FORMATS, NORMALISERS, BadLine, detect_object_format
from .rejects import RejectSink


@dataclass
class ReadStats:
    """What a read saw; filled in while iterating."""

    read: int = 0  # Records yielded (a seed task with 3 instances counts 3)
    bad: int = 0  # items that went to the rejects
    items: int = 0  # non-blank lines / array items / rows seen, good or bad
    fmt: str = ""
    reasons: Counter = field(default_factory=Counter)


# a \uD800-\uDFFF escape: json decodes a lone one into a str that cannot be written as UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # made once: json.loads builds one per call


def _loads(text: str) -> Any:
    """json.loads that refuses NaN/Infinity (they would not survive a round trip through Record)."""
    if text.startswith("\ufeff"):  # what json.loads refuses too (a byte-order mark past the first line)
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def _check_encodable(obj: Any) -> None:
    try:
        json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise BadLine("invalid: lone UTF-16 surrogate escape (\\ud800-\\udfff) cannot be stored as UTF-8") from None


def read_records(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    rejects: RejectSink | None = None,
    strict: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Record]:
    """Yield Records from `path`, streaming. Bad items go to `rejects` (or raise with `strict`).

    `fmt` is ``auto`` (detect), a record format (``record|selfinstruct|alpaca|chat``, any container) or a
    container (``parquet|hf``, record format detected per row). Only `DataforgeError` escapes.
    """
    p = Path(path)
    if fmt not in IN_FORMATS:
        raise DataforgeError(f"unknown input format {fmt!r}; choose from {', '.join(IN_FORMATS)}")
    check_input(p)
    container = fmt if fmt in ("parquet", "hf") else detect_container(p)
    if container == "jsonl":
        kind = detect_format(p) if fmt == "auto" else fmt
    else:
        kind = "auto" if fmt in ("auto", "parquet", "hf") else fmt
    stats = stats if stats is not None else ReadStats()
    stats.fmt = container if container != "jsonl" else kind
    sink = rejects if rejects is not None else RejectSink(None)
    unit = "" if container == "jsonl" else "item "

    def bad(where: int, raw: Any, reason: str) -> None:
        if strict:
            raise DataforgeError(f"{p}:{where}: {reason}" if not unit else f"{p}: {unit}{where}: {reason}")
        stats.bad += 1
        stats.reasons[reason.split(":", 1)[0]] += 1
        if not isinstance(raw, (str, bytes)):
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        sink.add(str(p), where, raw, reason)

    if container != "jsonl":
        items = {"parquet": _parquet_rows, "hf": _hf_rows, "json-array": _json_array_items}[container](p)
        for where, obj in items:
            stats.items += 1
            if container == "json-array":
                try:
                    _check_encodable(obj)
                except BadLine as exc:
                    bad(where, json.dumps(obj, ensure_ascii=True, default=str), str(exc))
                    continue
            yield from _normalise(obj, kind, where, bad, stats)
        return

    with _open_bytes(p) as fh:
        for lineno, raw in _numbered_lines(p, fh):
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            if not raw.strip():
                continue
            stats.items += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad(lineno, raw.rstrip(b"\r\n"), f"not UTF-8: byte {exc.start}")
                continue
            line = text.rstrip("\r\n")
            try:
                obj = _loads(text)
            except json.JSONDecodeError as exc:
                bad(lineno, line, f"not JSON: {exc.msg} at column {exc.colno}")
                continue
            except (ValueError, RecursionError) as exc:  # NaN, over-long integers, absurd nesting
                bad(lineno, line, f"not JSON: {str(exc).splitlines()[0][:200] or type(exc).__name__}")
                continue
            if "\\u" in line and _SURROGATE_ESCAPE.search(line):
                try:
                    _check_encodable(obj)
                except BadLine as exc:
                    bad(lineno, line, str(exc))
                    continue
            yield from _normalise(obj, kind, lineno, bad, stats, raw=line)


def _numbered_lines(p: Path, fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) pairs; a damaged compressed stream becomes a DataforgeError naming the line."""
    lines = enumerate(fh, start=1)
    lineno = 0
    while True:
        try:
            lineno, raw = next(lines)
        except StopIteration:
            return
        except _READ_ERRORS as exc:
            raise DataforgeError(f"{p}: unreadable after line {lineno}: {exc}") from exc
        yield lineno, raw


def _normalise(obj: Any, fmt: str, where: int, bad, stats: ReadStats, raw: str | None = None) -> Iterator[Record]:
    shown = raw if raw is not None else obj
    if not isinstance(obj, dict):
        bad(where, shown, "invalid: not a JSON object")
        return
    kind = detect_object_format(obj) if fmt == "auto" else fmt
    if kind is None:
        bad(where, shown, "invalid: not an instruction record (no instruction/messages/instances key)")
        return
    try:
        records = NORMALISERS[kind](obj)
    except BadLine as exc:
        bad(where, shown, str(exc))
        return
    except (ValueError, TypeError, RecursionError) as exc:  # anything odd a normaliser did not foresee
        bad(where, shown, f"invalid: {type(exc).__name__}: {exc}")
        return
    stats.read += len(records)
    yield from records


def _parquet_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, _decode_json_columns(row)
    except (pa.ArrowException, OSError) as exc:
        raise DataforgeError(f"{p}: unreadable Parquet after row {n}: {exc}") from exc


def _hf_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(p))  # memory-mapped Arrow: rows are read lazily
    except Exception as exc:  # datasets raises a zoo of types for a broken folder
        raise DataforgeError(f"{p}: cannot open the saved dataset: {exc}") from exc
    splits = list(ds.values()) if isinstance(ds, DatasetDict) else [ds]
    n = 0
    for split in splits:
        for batch in split.iter(batch_size=1024):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                n += 1
                yield n, _decode_json_columns(dict(zip(columns, values)))


def _decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet written by us stores nested fields as JSON strings; turn them back into objects."""
    for key in FLAT_JSON_COLUMNS:
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except ValueError:
                pass
    return {k: v for k, v in row.items() if v is not None or k in ("instruction",)}


def _json_array_items(p: Path) -> Iterator[tuple[int, Any]]:
    """Items of a top-level JSON array, parsed incrementally (ijson) so a huge array never sits in memory."""
    import ijson

    n = 0
    with _open_bytes(p) as fh:
        try:
            if fh.read(3) != _BOM:
                fh.seek(0)
            for n, obj in enumerate(ijson.items(fh, "item", use_float=True), start=1):
                yield n, obj
        except (ijson.JSONError, ValueError, RecursionError, *_READ_ERRORS) as exc:  # incl. UnicodeDecodeError
            raise DataforgeError(f"{p}: malformed JSON array after item {n}: {exc}") from exc
