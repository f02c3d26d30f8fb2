"""Structured output: ask for JSON, parse it with a pydantic model, repair it when it is broken.

Why not trust the backend's JSON mode alone: small models and some servers ignore the schema, wrap
the JSON in prose or code fences, or run out of tokens half-way. So: ask with the schema (where the
backend supports it), extract and validate; on failure send the `json_repair` template a bounded
number of times; output cut off at max_tokens is retried once with a larger budget and otherwise
reported as ``truncated`` — never silently parsed from a fragment.

    res = await generate_structured(llm, render("judge_alignment", llm.profile, ...), Verdict)
    if res.ok: use(res.value) else: record(res.reason, res.error)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ..prompts import RenderedPrompt, render
from .base import LLM, Completion, GenParams, Usage

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


@dataclass
class Structured(Generic[M]):
    """The outcome of one structured request: `value` when `ok`, else `reason` (invalid_json |
    schema | truncated) and `error`. `attempts` counts model calls including repairs."""

    value: M | None
    raw: str
    attempts: int
    reason: str | None = None
    error: str | None = None
    truncated: bool = False
    repaired: bool = False
    usage: Usage = field(default_factory=Usage)
    completions: list[Completion] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.value is not None


def extract_json(text: str) -> Any:
    """The first JSON object/array in `text` (code fences and surrounding prose tolerated).
    Raises ValueError with a short reason when there is none."""
    text = text.strip()
    candidates = [m.group(1).strip() for m in _FENCE.finditer(text)] + [text]
    for cand in candidates:
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            pass
        for opener, closer in (("{", "}"), ("[", "]")):
            start = cand.find(opener)
            while start != -1:
                end = _matching(cand, start, opener, closer)
                if end is None:
                    break
                try:
                    return json.loads(cand[start:end + 1])
                except json.JSONDecodeError:
                    start = cand.find(opener, start + 1)
    raise ValueError("no parseable JSON object in the reply" if text else "empty reply")


def _matching(s: str, start: int, opener: str, closer: str) -> int | None:
    depth, in_str, esc = 0, False, False
    for i in range(start, len(s)):
        ch = s[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return i
    return None


def strict_variant(schema: dict[str, Any]) -> dict[str, Any] | None:
    """`schema` as OpenAI's strict ``json_schema`` mode takes it (every object closed with
    ``additionalProperties: false``), or None when strict mode cannot express it (an object with
    optional properties). Strict mode makes hosted models follow the schema exactly."""
    def close(node: Any) -> Any:
        if isinstance(node, list):
            return [close(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: close(v) for k, v in node.items() if k != "default"}
        if node.get("type") == "object" or "properties" in node:
            props = node.get("properties") or {}
            if set(props) - set(node.get("required") or []):
                raise ValueError("optional property")
            out["additionalProperties"] = False
        return out

    try:
        return close(schema)
    except ValueError:
        return None


def parse_as(text: str, model: type[M]) -> M:
    """Extract JSON from `text` and validate it; ValueError/ValidationError on failure."""
    return model.model_validate(extract_json(text))


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errs = exc.errors()[:3]
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errs)
    return str(exc)


async def _send(llm: LLM, prompt: RenderedPrompt | list[dict[str, str]] | str, params: GenParams) -> Completion:
    if isinstance(prompt, RenderedPrompt):
        return await llm.generate(prompt, params)
    if isinstance(prompt, list):
        return await llm.chat(prompt, params)
    return await llm.complete(prompt, params)


async def generate_structured(llm: LLM, prompt: RenderedPrompt | list[dict[str, str]] | str, model: type[M],
                              params: GenParams = GenParams(temperature=0.0), *, max_repairs: int = 2,
                              max_tokens_cap: int = 4096) -> Structured[M]:
    """Ask for a `model` instance. Transport failures (`LLMError`) propagate; parse failures are
    returned as a `Structured` with ``ok == False`` and the reason."""
    schema = model.model_json_schema()
    params = params.replace(json_schema=schema, n=1)
    usage = Usage()
    completions: list[Completion] = []
    attempts, repaired, grew = 0, False, False
    current: RenderedPrompt | list[dict[str, str]] | str = prompt
    last_raw, last_error, reason = "", "", "invalid_json"
    while True:
        comp = await _send(llm, current, params)
        attempts += 1
        completions.append(comp)
        usage.add(comp.usage)
        last_raw = comp.text
        try:
            value = parse_as(last_raw, model)
            return Structured(value, last_raw, attempts, repaired=repaired, usage=usage, completions=completions,
                              truncated=False)
        except (ValueError, ValidationError) as exc:
            last_error = _short(exc)
            reason = "schema" if isinstance(exc, ValidationError) else "invalid_json"
        if comp.truncated:
            reason = "truncated"
            last_error = f"output cut off at max_tokens={params.max_tokens}"
            if not grew and params.max_tokens < max_tokens_cap:  # one more try with room to finish
                grew = True
                params = params.replace(max_tokens=min(params.max_tokens * 2, max_tokens_cap))
                continue
            return Structured(None, last_raw, attempts, reason, last_error, truncated=True, repaired=repaired,
                              usage=usage, completions=completions)
        if attempts > max_repairs:
            return Structured(None, last_raw, attempts, reason, last_error, repaired=repaired, usage=usage,
                              completions=completions)
        repaired = True
        current = render("json_repair", llm.profile, output=last_raw[:4000], error=last_error,
                         schema=json.dumps(schema, ensure_ascii=False), keys=list(schema.get("properties", {})))
