"""The behaviours of hosted APIs and reasoning servers that the loopback server can take on (`HostedAPI`).

Why they matter: a client tuned on a permissive test server fails on the first real one. Hosted chat
models refuse raw completions; many servers return no log-probabilities; reasoning models put their
thinking in the content or in an extra field, and it spends the token budget; OpenAI's strict
``json_schema`` mode refuses schemas that leave extra properties open. Each is reproduced here as the
real servers do it (status codes and messages included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CHAT_MODEL_REFUSAL = ("This is a chat model and not supported in the v1/completions endpoint. "
                      "Did you mean to use v1/chat/completions?")


@dataclass(frozen=True)
class HostedAPI:
    """How far the server behaves like a hosted API or a reasoning server.

    chat_only: ``/v1/completions`` is refused (404, OpenAI's message), as hosted chat models refuse it.
    logprobs: "yes" (returned), "omit" (accepted and ignored: ``logprobs: null``, as many servers do),
        "refuse" (400, as some reasoning models answer).
    think: "inline" (``<think>…</think>`` before the answer, as DeepSeek-R1/Qwen3 without a reasoning
        parser), "reasoning_content" or "reasoning" (a separate message field), or None.
    think_words: length of the thinking; it counts against ``max_tokens`` (a short budget ends the reply
        inside the think, with finish_reason "length").
    strict_schemas: ``json_schema`` with ``strict: true`` is checked as OpenAI checks it (400 otherwise).
    models: extra fields per model id in ``/v1/models`` (e.g. llama.cpp's ``{"meta": {"n_params": ...}}``
        or vLLM's ``{"root": "/models/SmolLM2-135M"}``); props: the body of ``GET /props`` (llama.cpp).
    """

    chat_only: bool = False
    logprobs: str = "yes"
    think: str | None = None
    think_words: int = 60
    strict_schemas: bool = True
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    props: dict[str, Any] | None = None

    def refusal(self, body: dict[str, Any], chat: bool) -> tuple[int, str, str] | None:
        """(status, message, type) when a real server of this kind would refuse the request."""
        h = self  # noqa: the rules read as "the hosted API"
        if not chat and h.chat_only:
            return 404, CHAT_MODEL_REFUSAL, "invalid_request_error"
        if h.logprobs == "refuse" and body.get("logprobs") not in (None, False):
            return 400, "logprobs is not supported with this model.", "invalid_request_error"
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not spec.get("name"):
                return 400, "Missing required parameter: 'response_format.json_schema.name'.", "invalid_request_error"
            if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(spec["name"])):
                return 400, "Invalid 'response_format.json_schema.name': string does not match pattern.", \
                    "invalid_request_error"
            if spec.get("strict") and h.strict_schemas:
                err = strict_schema_error(spec.get("schema"))
                if err:
                    return 400, f"Invalid schema for response_format '{spec['name']}': {err}", "invalid_request_error"
        elif isinstance(fmt, dict) and fmt.get("type") not in (None, "text", "json_object"):
            return 400, f"Invalid value for 'response_format.type': {fmt.get('type')!r}", "invalid_request_error"
        return None

    def __post_init__(self) -> None:
        if self.logprobs not in ("yes", "omit", "refuse"):
            raise ValueError("logprobs must be yes, omit or refuse")
        if self.think not in (None, "inline", "reasoning_content", "reasoning"):
            raise ValueError("think must be None, inline, reasoning_content or reasoning")


def strict_schema_error(schema: Any, where: str = "()") -> str | None:
    """Why OpenAI's strict mode would refuse `schema`, or None: every object needs
    ``additionalProperties: false`` and all its properties in ``required``."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={where}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties") or {}
        missing = [k for k in props if k not in (schema.get("required") or [])]
        if missing:
            return (f"In context={where}, 'required' is required to be supplied and to be an array including "
                    f"every key in properties. Missing '{missing[0]}'.")
        for k, sub in props.items():
            err = strict_schema_error(sub, f"('properties', '{k}')")
            if err:
                return err
    for key in ("items", "anyOf", "$defs", "definitions"):
        sub = schema.get(key)
        subs = sub.values() if isinstance(sub, dict) and key in ("$defs", "definitions") else (
            sub if isinstance(sub, list) else [sub] if isinstance(sub, dict) else [])
        for one in subs:
            err = strict_schema_error(one, f"('{key}',)")
            if err:
                return err
    return None


