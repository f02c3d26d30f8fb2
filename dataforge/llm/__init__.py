"""The LLM layer: one interface (`LLM`), three backends (openai-compatible, local llama.cpp, vLLM),
a persistent request cache, retries/rate limits and structured output.

    cfg = BackendConfig.from_env(base_url="http://localhost:8000/v1")
    llm = make_llm(cfg)
    completion = run_sync(llm.generate(render("evol_deepen", llm.profile, instruction=...), GenParams()))
"""

from __future__ import annotations

import asyncio
import sys
import threading
from contextlib import contextmanager
from typing import Any, Awaitable, Iterator, TypeVar

from ..errors import DataforgeError
from .base import LLM, Choice, Completion, GenParams, LLMError, Usage
from .config import BackendConfig, default_local_model, profile_for_model
from .structured import Structured, extract_json, generate_structured

T = TypeVar("T")

__all__ = [
    "LLM", "Choice", "Completion", "GenParams", "LLMError", "Usage",
    "BackendConfig", "make_llm", "make_backend", "run_sync", "stage_llm", "default_local_model", "profile_for_model",
    "Structured", "extract_json", "generate_structured",
]


def make_backend(cfg: BackendConfig) -> LLM:
    """The bare backend for `cfg` (no cache)."""
    kind = cfg.resolved_backend
    if kind == "openai":
        if not cfg.base_url:
            raise DataforgeError("the openai backend needs --base-url (or OPENAI_BASE_URL)")
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(cfg)
    if kind == "local":
        from .local_backend import LocalBackend

        return LocalBackend(cfg)
    if kind == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(cfg)
    raise DataforgeError(f"unknown backend {cfg.backend!r} (use auto, openai, local or vllm)")


def make_llm(cfg: BackendConfig | None = None) -> LLM:
    """The backend for `cfg`, wrapped in the persistent request cache unless `cfg.no_cache`."""
    cfg = cfg or BackendConfig.from_env()
    llm = make_backend(cfg)
    if cfg.no_cache:
        return llm
    from .cache import CachedLLM, RequestCache

    return CachedLLM(llm, RequestCache(cfg.resolved_cache_path()), base_url=cfg.base_url)


@contextmanager
def stage_llm(llm: LLM | None, backend: BackendConfig | dict | None = None) -> Iterator[LLM]:
    """The model a stage runs on: the caller's (left open for its next stage) or one made from
    `backend` (a BackendConfig, its dict, or None for the environment) and closed when the stage ends."""
    if llm is not None:
        yield llm
        return
    if isinstance(backend, dict):
        backend = BackendConfig(**backend)
    own = make_llm(backend or BackendConfig.from_env())
    try:
        yield own
    finally:
        run_sync(own.aclose())


async def _and_close_clients(coro: Awaitable[T]) -> T:
    try:
        return await coro
    finally:
        backend_module = sys.modules.get(f"{__name__}.openai_backend")
        if backend_module is not None:  # HTTP clients belong to this loop: close them before it ends
            await backend_module.close_loop_clients()


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is already running
    (Jupyter): then it runs on a fresh loop in a helper thread. HTTP clients opened on that loop are
    closed at the end (backends reopen them on the next call)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_and_close_clients(coro))
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(_and_close_clients(coro))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=runner, name="dataforge-run-sync")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
