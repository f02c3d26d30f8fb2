"""Reasoning models: their thinking never becomes data.

DeepSeek-R1, Qwen3 and similar models think before they answer. Served without a reasoning parser
(vLLM, llama.cpp) the thinking arrives inside the content as ``<think>…</think>``; with one, or from
hosted APIs, it arrives in a separate ``reasoning_content`` / ``reasoning`` field. Every backend sends
each answer through `split_reasoning`, so only the answer reaches records; the thinking is kept on the
`Choice` and copied into ``lineage.history`` only when the user asks (``--keep-reasoning``), e.g. to
build chain-of-thought data.

A think that runs out of tokens leaves no answer at all: the backend then asks again with the
reasoning allowance added (``BackendConfig.reasoning_tokens``), so the answer's own budget counts
after the reasoning.
"""

from __future__ import annotations

import re
from typing import Any

_OPEN = re.compile(r"<think>", re.I)
_CLOSE = re.compile(r"</think>", re.I)
_FIELDS = ("reasoning_content", "reasoning")


def split_reasoning(text: str | None, message: dict[str, Any] | None = None) -> tuple[str, str | None, bool]:
    """(answer, reasoning or None, thinking_unfinished).

    Handles ``<think>…</think>answer``; content that starts inside the think (templates that put
    ``<think>`` in the prompt, so only ``…</think>answer`` comes back); a stray extra ``</think>`` (what
    precedes it was still thinking); an unterminated ``<think>…``
    (cut off while thinking: no answer, `thinking_unfinished`); several think blocks; and the
    separate `reasoning_content` / `reasoning` fields of `message`."""
    text = text or ""
    parts: list[str] = []
    for key in _FIELDS:
        value = (message or {}).get(key)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
            break
    unfinished = False
    first_close = _CLOSE.search(text)
    first_open = _OPEN.search(text)
    if first_close and (first_open is None or first_close.start() < first_open.start()):
        parts.append(text[: first_close.start()].strip())  # the opening tag was in the prompt
        text = text[first_close.end():]
    while True:
        m = _OPEN.search(text)
        if not m:
            break
        end = _CLOSE.search(text, m.end())
        if end is None:  # cut off while thinking: whatever follows is reasoning, not an answer
            parts.append(text[m.end():].strip())
            text = text[: m.start()]
            unfinished = True
            break
        parts.append(text[m.end(): end.start()].strip())
        text = text[: m.start()] + text[end.end():]
    stray = list(_CLOSE.finditer(text))
    if stray:  # a closing tag with no opening one left: the model was still thinking
        parts.extend(piece.strip() for piece in _CLOSE.split(text[: stray[-1].start()]))  # each its own part
        text = text[stray[-1].end():]
    reasoning = "\n\n".join(p for p in parts if p) or None
    answer = text.strip() if reasoning is not None or unfinished else text
    return answer, reasoning, unfinished


def reasoning_history(llm: Any, completion: Any, step: str) -> list[dict[str, Any]]:
    """The ``lineage.history`` entries for a completion's reasoning: one entry when the user asked to
    keep reasoning (``keep_reasoning`` on the backend config) and there was some, else none."""
    cfg = getattr(llm, "cfg", None)
    if not getattr(cfg, "keep_reasoning", False):
        return []
    choices = getattr(completion, "choices", None) or []
    text = getattr(choices[0], "reasoning", None) if choices else None
    return [{"kind": "reasoning", "step": step, "text": text}] if text else []


async def with_reasoning_budget(llm: Any, send: Any, params: Any) -> Any:
    """Send with room to think. Once a model has shown reasoning, every request gets
    ``cfg.reasoning_tokens`` on top of its answer budget; the first answer cut off inside or right after
    its thinking (before the model was known to think) is asked again with that allowance, so a long
    think does not eat the answer's budget."""
    allowance = int(getattr(getattr(llm, "cfg", None), "reasoning_tokens", 0) or 0)
    thinks = getattr(llm, "_thinks", False)
    sent = params.replace(max_tokens=params.max_tokens + allowance) if thinks and allowance else params
    comp = await send(sent)
    if any(c.reasoning for c in comp.choices):
        llm._thinks = True
        if sent is params and allowance and any(c.truncated and c.reasoning for c in comp.choices):
            comp = await send(params.replace(max_tokens=params.max_tokens + allowance))
    return comp
