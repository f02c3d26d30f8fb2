"""Streaming readers and writers. Nothing here holds a whole file in memory.

Reading: `read_records(path)` yields `Record`s from any supported format (detected automatically,
or forced with `fmt=`). A line that is not UTF-8, not JSON, or not a valid record never aborts the run
and never disappears: it goes to a `RejectSink` (``<out>.rejects.jsonl``) with file, line, raw text and
reason. With ``strict=True`` the first bad line raises `DataforgeError` naming file and line.

Writing: `RecordWriter` writes atomically (temp file in the same folder, fsync, rename), in Record,
Alpaca, chat-messages or parquet format. `Journal` is the append-with-fsync file long runs write to; on
reopen it repairs a partially written last line so a killed run can resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from pydantic import ValidationError

from .errors import DataforgeError
from .records import Record

IN_FORMATS = ("auto", "record", "selfinstruct", "alpaca", "chat", "parquet", "hf")
OUT_FORMATS = ("record", "alpaca", "chat", "parquet")
RECORD_KEYS = frozenset(Record.model_fields)

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
    """Collects bad input lines into a JSONL file (created on first reject) and counts them by reason."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.counts: Counter[str] = Counter()
        self._fh: IO[str] | None = None

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

    read: int = 0
    bad: int = 0
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
    meta = {k: v for k, v in obj.items() if k not in used and k not in RECORD_KEYS}
    extra = {k: obj[k] for k in ("id", "task", "meta") if k in obj}
    if isinstance(extra.get("meta"), dict):
        meta = {**meta, **extra.pop("meta")}
    return from_record({**fields, **extra, "meta": meta, "lineage": {"generator": "import"}})


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
    out = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise BadLine(f"invalid: instance {i} is not an object")
        meta = {"task_id": task_id, "name": obj.get("name"), "is_classification": is_cls, "instance": i}
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


def from_chat(obj: dict[str, Any]) -> list[Record]:
    """First user turn -> instruction, first assistant turn after it -> output; the rest kept in meta."""
    turns = _turns(obj)
    meta: dict[str, Any] = {k: v for k, v in obj.items() if k not in ("messages", "conversations", "id")}
    system = [t["content"] for t in turns if t["role"] == "system"]
    convo = [t for t in turns if t["role"] != "system"]
    if not convo or convo[0]["role"] != "user" or not convo[0]["content"].strip():
        raise BadLine("invalid: conversation does not start with a non-empty user turn")
    output = convo[1]["content"] if len(convo) > 1 and convo[1]["role"] == "assistant" else ""
    if system:
        meta["system"] = system[0]
    if len(convo) > 2:
        meta["messages"] = turns
    extra = {"id": obj["id"]} if isinstance(obj.get("id"), str) else {}
    return from_record({"instruction": convo[0]["content"], "output": output, "meta": meta,
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


def _is_hf_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                           or (p / "state.json").exists())


def detect_format(path: str | os.PathLike) -> str:
    """Container + record format of a file: parquet, hf, alpaca (JSON array) or the first good JSONL line's."""
    p = Path(path)
    if p.is_dir():
        if _is_hf_dir(p):
            return "hf"
        raise DataforgeError(f"{p}: a folder that is not a saved Hugging Face dataset")
    if p.suffix == ".parquet":
        return "parquet"
    with open(p, "rb") as fh:
        head = fh.read(4096).lstrip()
        if head.startswith(b"PAR1"):
            return "parquet"
        if head.startswith(b"["):
            return "json-array"
        fh.seek(0)
        for n, raw in enumerate(fh):
            if n >= 50:
                break
            try:
                fmt = detect_object_format(json.loads(raw))
            except (ValueError, UnicodeDecodeError):
                continue
            if fmt:
                return fmt
    raise DataforgeError(f"{p}: cannot tell the format from the first lines; pass --format "
                         f"({', '.join(IN_FORMATS[1:])})")


def _check_input(p: Path) -> None:
    if not p.exists():
        raise DataforgeError(f"{p}: no such file")
    if p.is_file() and p.stat().st_size == 0:
        raise DataforgeError(f"{p}: the file is empty")


# --------------------------------------------------------------------------- readers


def read_records(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    rejects: RejectSink | None = None,
    strict: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Record]:
    """Yield Records from `path`, streaming. Bad items go to `rejects` (or raise with `strict`)."""
    p = Path(path)
    _check_input(p)
    if fmt not in IN_FORMATS:
        raise DataforgeError(f"unknown input format {fmt!r}; choose from {', '.join(IN_FORMATS)}")
    container = detect_format(p) if fmt == "auto" else fmt
    stats = stats if stats is not None else ReadStats()
    stats.fmt = container
    sink = rejects if rejects is not None else RejectSink(None)

    def bad(where: int, raw: Any, reason: str) -> None:
        if strict:
            raise DataforgeError(f"{p}:{where}: {reason}")
        stats.bad += 1
        stats.reasons[reason.split(":", 1)[0]] += 1
        sink.add(str(p), where, raw if isinstance(raw, (str, bytes)) else json.dumps(raw, default=str), reason)

    if container in ("parquet", "hf", "json-array"):
        items = {"parquet": _parquet_rows, "hf": _hf_rows, "json-array": _json_array_items}[container](p)
        inner = "auto" if fmt in ("auto", "parquet", "hf") else fmt
        for where, obj in items:
            yield from _normalise(obj, inner, where, bad, stats)
        return

    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad(lineno, raw, f"not UTF-8: byte {exc.start}")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                bad(lineno, text.rstrip("\n"), f"not JSON: {exc.msg} at column {exc.colno}")
                continue
            yield from _normalise(obj, container, lineno, bad, stats, raw=text.rstrip("\n"))


def _normalise(obj: Any, fmt: str, where: int, bad, stats: ReadStats, raw: str | None = None) -> Iterator[Record]:
    kind = detect_object_format(obj) if fmt == "auto" else fmt
    if kind is None:
        bad(where, raw if raw is not None else obj, "invalid: not an instruction record (no instruction/messages/instances key)")
        return
    if not isinstance(obj, dict):
        bad(where, raw if raw is not None else obj, "invalid: not a JSON object")
        return
    try:
        records = NORMALISERS[kind](obj)
    except BadLine as exc:
        bad(where, raw if raw is not None else obj, str(exc))
        return
    stats.read += len(records)
    yield from records


def _parquet_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, _decode_json_columns(row)


def _hf_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(p))  # memory-mapped Arrow: rows are read lazily
    splits = list(ds.values()) if isinstance(ds, DatasetDict) else [ds]
    n = 0
    for split in splits:
        for row in split:
            n += 1
            yield n, _decode_json_columns(row)


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
    import ijson

    with open(p, "rb") as fh:
        try:
            for i, obj in enumerate(ijson.items(fh, "item", use_float=True), start=1):
                yield i, obj
        except ijson.JSONError as exc:
            raise DataforgeError(f"{p}: malformed JSON array: {exc}") from exc


# --------------------------------------------------------------------------- writers


def to_alpaca(r: Record) -> dict[str, Any]:
    return {"instruction": r.instruction, "input": r.input, "output": r.output}


def to_chat(r: Record) -> dict[str, Any]:
    """OpenAI/TRL `messages` (input appended to the user turn), loadable by datasets' json builder."""
    user = r.prompt_text
    messages = []
    if r.meta.get("system"):
        messages.append({"role": "system", "content": str(r.meta["system"])})
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": r.output}]
    return {"id": r.id, "messages": messages}


def to_flat(r: Record) -> dict[str, Any]:
    """Parquet row: scalar columns; nested fields as JSON strings so the schema stays fixed."""
    d = r.model_dump()
    for key in ("lineage", "scores", "meta", "reasons"):
        d[key] = json.dumps(d[key], ensure_ascii=False, default=str)
    return d


def _atomic_tmp(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


class RecordWriter:
    """Writes Records to `path` atomically: readers never see a half-written file.

    >>> with RecordWriter("out.jsonl", fmt="alpaca") as w:  # doctest: +SKIP
    ...     w.write(record)
    """

    def __init__(self, path: str | os.PathLike, fmt: str = "record", batch_size: int = 1024):
        if fmt not in OUT_FORMATS:
            raise DataforgeError(f"unknown output format {fmt!r}; choose from {', '.join(OUT_FORMATS)}")
        self.path = Path(path)
        self.fmt = fmt
        self.count = 0
        fd, self._tmp = _atomic_tmp(self.path)
        self._batch: list[dict[str, Any]] = []
        self._batch_size = batch_size
        self._pq = None
        if fmt == "parquet":
            os.close(fd)
            self._fh = None
        else:
            self._fh = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, record: Record) -> None:
        self.count += 1
        if self.fmt == "parquet":
            self._batch.append(to_flat(record))
            if len(self._batch) >= self._batch_size:
                self._flush_parquet()
            return
        if self.fmt == "record":
            line = record.model_dump_json()
        else:
            line = json.dumps(to_alpaca(record) if self.fmt == "alpaca" else to_chat(record), ensure_ascii=False)
        self._fh.write(line + "\n")

    def write_all(self, records: Iterable[Record]) -> int:
        for r in records:
            self.write(r)
        return self.count

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._batch:
            return
        table = pa.Table.from_pylist(self._batch, schema=self._pq.schema if self._pq else None)
        if self._pq is None:
            self._pq = pq.ParquetWriter(self._tmp, table.schema)
        self._pq.write_table(table)
        self._batch = []

    def close(self) -> None:
        if self.fmt == "parquet":
            self._flush_parquet()
            if self._pq is None:  # no rows: still write a valid empty file with the record schema
                import pyarrow as pa
                import pyarrow.parquet as pq

                empty = to_flat(Record(instruction="x"))
                schema = pa.Table.from_pylist([empty]).schema
                pq.write_table(schema.empty_table(), self._tmp)
            else:
                self._pq.close()
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        else:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            if self._fh:
                self._fh.close()
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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Small JSON documents (stats, manifests, state) written atomically."""
    p = Path(path)
    fd, tmp = _atomic_tmp(p)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


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
            for raw in fh:
                if raw.strip():
                    yield json.loads(raw)

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
