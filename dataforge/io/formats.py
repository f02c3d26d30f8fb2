"""Record formats: how outside shapes (Self-Instruct seed tasks, Alpaca variants, chat messages) become
Records, and how Records become Alpaca, chat or flat Parquet rows again. Pure functions, no files."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..records import Record


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
