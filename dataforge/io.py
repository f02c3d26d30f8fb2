"""Streaming readers and writers. Nothing here holds a whole file in memory.

Reading: `read_records(path)` yields `Record`s from any supported format (detected automatically,
or forced with `fmt=`). A line that is not UTF-8, not JSON, or not a valid record never aborts the run
and never disappears: it goes to a `RejectSink` (``<out>.rejects.jsonl``) with file, line, raw text and
reason. With ``strict=True`` the first bad line raises `DataforgeError` naming file and line.

Writing: `RecordWriter` writes atomically (temp file in the same folder, fsync, rename), in Record,
Alpaca, chat-messages or parquet format. `Journal` is the append-with-fsync file long runs write to; on
reopen it repairs a partially written last line so a killed run can resume.

Containers: ``.jsonl``/``.ndjson`` files are always read line by line; other files are sniffed (a
Parquet magic number, a leading ``[`` for a JSON array, else JSON Lines); a folder must be a saved
Hugging Face ``datasets`` directory. Gzip files (``*.gz`` or the gzip magic) are read and, for JSONL
outputs named ``*.gz``, written compressed on the fly. For arrays, Parquet and HF folders the "line" of a reject is the
1-based item (row) number.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tempfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from pydantic import ValidationError

from .errors import DataforgeError
from .records import Record

IN_FORMATS = ("auto", "record", "selfinstruct", "alpaca", "chat", "parquet", "hf")
OUT_FORMATS = ("record", "alpaca", "chat", "parquet")
RECORD_KEYS = frozenset(Record.model_fields)
_PASSTHROUGH = tuple(k for k in Record.model_fields if k not in ("instruction", "input", "output"))

# outside names for the three text fields (Alpaca variants, Dolly, GSM8K, GPTeacher, ...)
_ALIASES = {
    "instruction": ("instruction", "prompt", "question", "query"),
    "input": ("input", "context"),
    "output": ("output", "response", "answer", "completion"),
}
_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}


class BadLine(ValueError):
    """One input item could not become a Record (the reason is the message)."""


# --------------------------------------------------------------------------- rejects


def rejects_path_for(out: str | os.PathLike) -> Path:
    return Path(f"{out}.rejects.jsonl")


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


@dataclass
class ReadStats:
    """What a read saw; filled in while iterating."""

    read: int = 0  # Records yielded (a seed task with 3 instances counts 3)
    bad: int = 0  # items that went to the rejects
    items: int = 0  # non-blank lines / array items / rows seen, good or bad
    fmt: str = ""
    reasons: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------- normalisers


def _pick(obj: dict[str, Any], field_name: str) -> tuple[str | None, str]:
    for key in _ALIASES[field_name]:
        if key in obj:
            return key, obj[key]
    return None, ""


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadLine(f"invalid: field {what!r} must be a string, got {type(value).__name__}")
    return value


def from_record(obj: dict[str, Any]) -> list[Record]:
    try:
        return [Record.model_validate(obj)]
    except ValidationError as exc:
        raise BadLine("invalid: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


def from_alpaca(obj: dict[str, Any]) -> list[Record]:
    used = []
    fields: dict[str, str] = {}
    for name in ("instruction", "input", "output"):
        key, value = _pick(obj, name)
        if key:
            used.append(key)
        fields[name] = _text(value, key or name)
    if not fields["instruction"].strip():
        raise BadLine("invalid: empty or missing instruction")
    # Record fields the file already has (id, task, scores, status, ...) are kept as they are, foreign keys
    # go to meta: nothing in the input is silently dropped.
    meta = {k: v for k, v in obj.items() if k not in used and k not in RECORD_KEYS}
    extra = {k: obj[k] for k in _PASSTHROUGH if k in obj and k not in used}
    if "meta" in extra:
        if not isinstance(extra["meta"], dict):
            raise BadLine("invalid: meta: must be an object")
        meta = {**meta, **extra.pop("meta")}
    extra.setdefault("lineage", {"generator": "import"})
    return from_record({**fields, **extra, "meta": meta})


_SEED_KEYS = frozenset({"id", "name", "instruction", "instances", "is_classification"})


def from_seed_task(obj: dict[str, Any]) -> list[Record]:
    """Self-Instruct seed task: one Record per instance (flattened), sharing `meta.task_id`."""
    instruction = _text(obj.get("instruction"), "instruction")
    if not instruction.strip():
        raise BadLine("invalid: empty or missing instruction")
    instances = obj.get("instances") or [{"input": "", "output": ""}]
    if not isinstance(instances, list):
        raise BadLine("invalid: 'instances' must be a list")
    is_cls = bool(obj.get("is_classification", False))
    task_id = str(obj.get("id") or "")
    extra_meta = {k: v for k, v in obj.items() if k not in _SEED_KEYS}
    out = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise BadLine(f"invalid: instance {i} is not an object")
        meta = {**extra_meta, "task_id": task_id, "name": obj.get("name"), "is_classification": is_cls,
                "instance": i}
        meta.update({f"instance_{k}": v for k, v in inst.items() if k not in ("input", "output")})
        out.extend(from_record({
            "instruction": instruction,
            "input": _text(inst.get("input"), "input"),
            "output": _text(inst.get("output"), "output"),
            "task": "classification" if is_cls else "generation",
            "meta": meta,
            "lineage": {"generator": "seed", "round": 0},
        }))
    return out


def _turns(obj: dict[str, Any]) -> list[dict[str, str]]:
    raw = obj.get("messages", obj.get("conversations"))
    if not isinstance(raw, list) or not raw:
        raise BadLine("invalid: 'messages'/'conversations' must be a non-empty list")
    turns = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadLine(f"invalid: message {i} is not an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role not in _ROLE or not isinstance(content, str):
            raise BadLine(f"invalid: message {i} needs a known role and string content")
        turns.append({"role": _ROLE[role], "content": content})
    return turns


def _first_exchange(turns: list[dict[str, str]]) -> tuple[str, str]:
    """(first user turn, the assistant turn right after it or "") of a conversation."""
    convo = [t for t in turns if t["role"] != "system"]
    if not convo or convo[0]["role"] != "user":
        return "", ""
    return convo[0]["content"], convo[1]["content"] if len(convo) > 1 and convo[1]["role"] == "assistant" else ""


def _chat_messages(user: str, output: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def from_chat(obj: dict[str, Any]) -> list[Record]:
    """First user turn -> instruction, first assistant turn after it -> output.

    The whole conversation is kept in ``meta.messages`` whenever those two turns (plus one leading system
    message, kept in ``meta.system``) do not say everything, so writing chat again loses no turn.
    """
    turns = _turns(obj)
    meta: dict[str, Any] = {k: v for k, v in obj.items() if k not in ("messages", "conversations", "id")}
    instruction, output = _first_exchange(turns)
    if not instruction.strip():
        raise BadLine("invalid: conversation does not start with a non-empty user turn")
    system = next((t["content"] for t in turns if t["role"] == "system"), None)
    if system is not None:
        meta["system"] = system
    if turns != _chat_messages(instruction, output, system):
        meta["messages"] = turns
    if "id" in obj and not isinstance(obj["id"], str):
        meta["source_id"] = obj["id"]
    extra = {"id": obj["id"]} if isinstance(obj.get("id"), str) else {}
    return from_record({"instruction": instruction, "output": output, "meta": meta,
                        "lineage": {"generator": "import"}, **extra})


NORMALISERS = {"record": from_record, "alpaca": from_alpaca, "selfinstruct": from_seed_task, "chat": from_chat}


def detect_object_format(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    keys = set(obj)
    if "instances" in keys:
        return "selfinstruct"
    if "messages" in keys or "conversations" in keys:
        return "chat"
    if "instruction" in keys and keys <= RECORD_KEYS:
        return "record"
    if any(k in keys for k in _ALIASES["instruction"]):
        return "alpaca"
    return None


# --------------------------------------------------------------------------- detection

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


def _check_input(p: Path) -> None:
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


# --------------------------------------------------------------------------- readers

# a \uD800-\uDFFF escape: json decodes a lone one into a str that cannot be written as UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    """json.loads that refuses NaN/Infinity (they would not survive a round trip through Record)."""
    return json.loads(text, parse_constant=_reject_constant)


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
    _check_input(p)
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
    for key in ("lineage", "scores", "meta", "reasons"):
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


# --------------------------------------------------------------------------- writers


def to_alpaca(r: Record) -> dict[str, Any]:
    return {"instruction": r.instruction, "input": r.input, "output": r.output}


def to_chat(r: Record) -> dict[str, Any]:
    """OpenAI/TRL `messages` (input appended to the user turn), loadable by datasets' json builder.

    A conversation read from a chat file comes back whole (all turns, from ``meta.messages``) as long as
    its first exchange was not changed since.
    """
    kept = r.meta.get("messages")
    if isinstance(kept, list) and not r.input:
        try:
            if _first_exchange(kept) == (r.instruction, r.output):
                return {"id": r.id, "messages": [{"role": m["role"], "content": m["content"]} for m in kept]}
        except (KeyError, TypeError):
            pass  # meta.messages edited into something else: fall back to the record's own text
    system = r.meta.get("system")
    return {"id": r.id, "messages": _chat_messages(r.prompt_text, r.output, str(system) if system else None)}


FLAT_JSON_COLUMNS = ("reasons", "scores", "lineage", "meta")


def parquet_schema():
    """The fixed Arrow schema of a flattened Record (nested fields as JSON text), so every batch agrees."""
    import pyarrow as pa

    types = {"complexity": pa.float64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in Record.model_fields])


def to_flat(r: Record) -> dict[str, Any]:
    """Parquet row: scalar columns; nested fields as JSON strings so the schema stays fixed."""
    d = r.model_dump()
    for key in FLAT_JSON_COLUMNS:
        d[key] = json.dumps(d[key], ensure_ascii=False, default=str)
    return d


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
                    line = json.dumps(to_alpaca(record) if self.fmt == "alpaca" else to_chat(record),
                                      ensure_ascii=False)
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


# --------------------------------------------------------------------------- journal (resumable runs)


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
