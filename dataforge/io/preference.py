"""Preference pairs in TRL's DPO format, both ways.

A pair is a Record whose `output` is the chosen answer and whose `preference` holds the rejected one and
the ranking; on disk it is the row TRL's DPO trainer reads: ``prompt``, ``chosen``, ``rejected``, either
conversational (``dpo``: lists of messages, so TRL applies the model's chat template) or plain (``dpo_plain``:
strings), plus ``score_chosen`` / ``score_rejected`` (the names of TRL's own binarised datasets), ``reason``
and ``kind``. Rows with an implicit prompt (whole conversations in ``chosen`` and ``rejected``) or with
earlier turns in the prompt are refused by name: a pair here answers one user message.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataforgeError
from ..records import Record

PREFERENCE_KEYS = frozenset({"prompt", "chosen", "rejected"})
_ROW_KEYS = PREFERENCE_KEYS | {"id", "score_chosen", "score_rejected", "reason", "kind"}


def _pair_of(r: Record) -> Any:
    if r.preference is None:
        raise DataforgeError(f"record {r.id} is not a preference pair (no rejected answer): the dpo formats "
                             "write the output of `dataforge pairs`")
    if r.turns:
        raise DataforgeError(f"record {r.id}: preference pairs over conversations are not supported")
    return r.preference


def _extras(r: Record) -> dict[str, Any]:
    p = r.preference
    return {"score_chosen": p.chosen_score, "score_rejected": p.rejected_score, "reason": p.reason, "kind": p.kind}


def to_dpo(r: Record) -> dict[str, Any]:
    """Conversational DPO row: prompt = [system?, user], chosen / rejected = [assistant]."""
    p = _pair_of(r)
    system = r.meta.get("system")
    prompt = ([{"role": "system", "content": str(system)}] if system else []) + \
        [{"role": "user", "content": r.prompt_text}]
    return {"id": r.id, "prompt": prompt, "chosen": [{"role": "assistant", "content": r.output}],
            "rejected": [{"role": "assistant", "content": p.rejected}], **_extras(r)}


def to_dpo_plain(r: Record) -> dict[str, Any]:
    """Plain DPO row: prompt, chosen and rejected as strings."""
    p = _pair_of(r)
    return {"id": r.id, "prompt": r.prompt_text, "chosen": r.output, "rejected": p.rejected, **_extras(r)}


def _answer(value: Any, what: str) -> str:
    from .formats import BadLine

    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
        return value[0]["content"]
    raise BadLine(f"invalid: {what!r} must be a string or one assistant message (a whole conversation there "
                  "means an implicit prompt, which is not supported)")


def _prompt(value: Any) -> tuple[str, str | None]:
    """(user text, system text) of a DPO prompt."""
    from .formats import BadLine

    if isinstance(value, str):
        return value, None
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise BadLine("invalid: 'prompt' must be a string or a list of messages")
    system = [m for m in value if m.get("role") == "system"]
    rest = [m for m in value if m.get("role") != "system"]
    if len(rest) != 1 or rest[0].get("role") != "user" or not isinstance(rest[0].get("content"), str) \
            or len(system) > 1 or (system and value[0] is not system[0]):
        raise BadLine("invalid: 'prompt' must be one user message (after an optional system message); "
                      "multi-turn prompts are not supported")
    sys_text = system[0].get("content") if system else None
    return rest[0]["content"], sys_text if isinstance(sys_text, str) else None


def from_dpo(obj: dict[str, Any]) -> list[Record]:
    """A DPO row (conversational or plain) -> a Record with `preference`; other keys go to meta."""
    from .formats import BadLine, from_record

    user, system = _prompt(obj["prompt"])
    if not user.strip():
        raise BadLine("invalid: empty prompt")
    chosen, rejected = _answer(obj["chosen"], "chosen"), _answer(obj["rejected"], "rejected")
    meta = {k: v for k, v in obj.items() if k not in _ROW_KEYS}
    if system is not None:
        meta["system"] = system
    scores = {}
    for key, field in (("score_chosen", "chosen_score"), ("score_rejected", "rejected_score")):
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BadLine(f"invalid: {key!r} must be a number")
        scores[field] = value
    kind = obj.get("kind") or "imported"
    preference = {"rejected": rejected, "kind": kind, "reason": str(obj.get("reason") or ""), **scores}
    extra = {"id": obj["id"]} if isinstance(obj.get("id"), str) else {}
    return from_record({"instruction": user, "output": chosen, "preference": preference, "meta": meta,
                        "lineage": {"generator": "import"}, **extra})
