"""`dataforge chat "..."`: one prompt to the configured backend — the quickest way to check that a
server, a model and the options work before starting a long job."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from ._common import print_summary
from ._options import backend_config, config_command


def chat(
    prompt: Annotated[str, typer.Argument(help="The user message (or the raw prompt with --raw).")],
    system: Annotated[Optional[str], typer.Option("--system", help="System message (chat only).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send as a raw completion prompt instead of a chat message.")] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Reply length budget.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature.")] = 0.7,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampling seed (part of the cache key).")] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of samples.")] = 1,
    *, backend: dict,
) -> None:
    """Send one prompt to the configured backend; print the reply and the token usage."""
    from ..llm import GenParams, LLMError, make_llm, run_sync
    from ..errors import DataforgeError

    llm = make_llm(backend_config(backend))
    params = GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed, n=n)

    async def ask():
        try:
            if raw:
                return await llm.complete(prompt, params)
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            return await llm.chat(messages, params)
        finally:
            await llm.aclose()

    start = time.perf_counter()
    try:
        comp = run_sync(ask())
    except LLMError as exc:
        raise DataforgeError(f"chat failed: {exc}") from None
    seconds = time.perf_counter() - start
    for i, choice in enumerate(comp.choices):
        if len(comp.choices) > 1:
            typer.secho(f"--- sample {i + 1} ---", bold=True)
        typer.echo(choice.text)
    print_summary({
        "model": llm.model_id,
        "finish_reason": ", ".join(c.finish_reason for c in comp.choices),
        "prompt_tokens": comp.usage.prompt_tokens,
        "completion_tokens": comp.usage.completion_tokens,
        "cached": comp.cached,
        "retries": comp.usage.retries,
        "seconds": round(seconds, 3),
    }, title="usage")


def register(app: typer.Typer) -> None:
    config_command(app, "chat", None, backend=True)(chat)
