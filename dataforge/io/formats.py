"""Record formats: how outside shapes (Self-Instruct seed tasks, Alpaca variants, chat messages, ShareGPT,
TRL preference rows) become Records, and how Records become Alpaca, chat, ShareGPT, preference or flat
Parquet rows again. Pure functions, no files. A conversation keeps every turn in `Record.turns`; a format
that holds one exchange (Alpaca) refuses a record with later turns rather than drop them."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..errors import DataforgeError
from ..records import Record, Turn


IN_FORMATS = ("auto", "record", "selfinstruct", "alpaca", "chat", "dpo", "parquet", "hf")
OUT_FORMATS = ("record", "alpaca", "chat", "sharegpt", "dpo", "dpo_plain", "parquet")
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


def _later_turns(turns: list[dict[str, str]]) -> list[Turn] | None:
    """The turns after the first exchange when the conversation is one optional leading system message and
    then user and assistant alternating (what `Record.turns` holds); None for any other shape."""
    convo = turns[1:] if turns and turns[0]["role"] == "system" else turns
    roles = [t["role"] for t in convo]
    if len(roles) < 4 or len(roles) % 2 or roles != ["user", "assistant"] * (len(roles) // 2):
        return None
    return [Turn(role=t["role"], content=t["content"]) for t in convo[2:]]  # type: ignore[arg-type]


def from_chat(obj: dict[str, Any]) -> list[Record]:
    """First user turn -> instruction, first assistant turn after it -> output, later turns -> `turns`.

    A conversation of another shape (two user messages in a row, a system message in the middle, a last
    question without an answer) is kept whole in ``meta.messages``, so writing chat again loses no turn.
    """
    turns = _turns(obj)
    meta: dict[str, Any] = {k: v for k, v in obj.items() if k not in ("messages", "conversations", "id")}
    instruction, output = _first_exchange(turns)
    if not instruction.strip():
        raise BadLine("invalid: conversation does not start with a non-empty user turn")
    system = next((t["content"] for t in turns if t["role"] == "system"), None)
    if system is not None:
        meta["system"] = system
    later = _later_turns(turns)
    if later is None and turns != _chat_messages(instruction, output, system):
        meta["messages"] = turns
    if "id" in obj and not isinstance(obj["id"], str):
        meta["source_id"] = obj["id"]
    extra: dict[str, Any] = {"id": obj["id"]} if isinstance(obj.get("id"), str) else {}
    if later:
        extra["turns"] = later
    return from_record({"instruction": instruction, "output": output, "meta": meta,
                        "lineage": {"generator": "import"}, **extra})


from .preference import PREFERENCE_KEYS, from_dpo, to_dpo, to_dpo_plain  # noqa: E402  (uses the helpers above)

NORMALISERS = {"record": from_record, "alpaca": from_alpaca, "selfinstruct": from_seed_task, "chat": from_chat,
               "dpo": from_dpo}


def detect_object_format(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    keys = set(obj)
    if "instances" in keys:
        return "selfinstruct"
    if PREFERENCE_KEYS <= keys:
        return "dpo"
    if "messages" in keys or "conversations" in keys:
        return "chat"
    if "instruction" in keys and keys <= RECORD_KEYS:
        return "record"
    if any(k in keys for k in _ALIASES["instruction"]):
        return "alpaca"
    return None


def to_alpaca(r: Record) -> dict[str, Any]:
    if r.turns:
        raise DataforgeError(f"record {r.id} is a conversation of {r.assistant_turns} answers; Alpaca holds one "
                             "exchange: write chat or sharegpt to keep every turn")
    return {"instruction": r.instruction, "input": r.input, "output": r.output}


def to_chat(r: Record) -> dict[str, Any]:
    """OpenAI/TRL `messages` (input appended to the first user turn, every later turn kept), loadable by
    datasets' json builder. A conversation of another shape read from a chat file (``meta.messages``) comes
    back whole as long as its first exchange was not changed since."""
    kept = r.meta.get("messages")
    if isinstance(kept, list) and not r.input and not r.turns:
        try:
            if _first_exchange(kept) == (r.instruction, r.output):
                return {"id": r.id, "messages": [{"role": m["role"], "content": m["content"]} for m in kept]}
        except (KeyError, TypeError):
            pass  # meta.messages edited into something else: fall back to the record's own text
    system = r.meta.get("system")
    return {"id": r.id, "messages": r.messages(str(system) if system else None)}


_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


def to_sharegpt(r: Record) -> dict[str, Any]:
    """ShareGPT `conversations` (from: system / human / gpt), every turn kept."""
    return {"id": r.id, "conversations": [{"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]}
                                          for m in to_chat(r)["messages"]]}


# output format -> one JSON row per record (record and parquet are written by the writer itself)
ROW_FORMATS = {"alpaca": to_alpaca, "chat": to_chat, "sharegpt": to_sharegpt, "dpo": to_dpo, "dpo_plain": to_dpo_plain}


FLAT_JSON_COLUMNS = ("reasons", "scores", "lineage", "meta", "turns", "preference")


def parquet_schema():
    """The fixed Arrow schema of a flattened Record (nested fields as JSON text), so every batch agrees."""
    import pyarrow as pa

    types = {"complexity": pa.float64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in Record.model_fields])


def to_flat(r: Record) -> dict[str, Any]:
    """Parquet row: scalar columns; nested fields as JSON strings so the schema stays fixed."""
    d = {"turns": [], "preference": None, **r.model_dump()}
    for key in FLAT_JSON_COLUMNS:
        d[key] = json.dumps(d[key], ensure_ascii=False, default=str)
    return d
