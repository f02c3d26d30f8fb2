"""Reachability and speed probes behind `dataforge backends`."""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from .base import GenParams
from .config import BackendConfig, default_local_model
from .retry import redact



async def _probe_one(llm: Any, probe: bool, probe_tokens: int) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": llm.backend, "status": "ok"}
    t0 = time.perf_counter()
    if hasattr(llm, "list_models"):
        models = await llm.list_models()
        row["detail"] = f"{len(models)} model(s) listed in {time.perf_counter() - t0:.2f}s"
        await llm.resolve_model()
    if hasattr(llm, "load"):
        import asyncio

        await asyncio.to_thread(llm.load)
        row["detail"] = f"loaded in {time.perf_counter() - t0:.1f}s"
    row["model"], row["profile"] = llm.model, llm.profile
    if probe:
        params = GenParams(temperature=0.0, max_tokens=probe_tokens, seed=0)
        t1 = time.perf_counter()
        from ..prompts import render

        comp = await llm.chat(render("speed_probe", "chat").messages, params)  # same prompt for every backend
        secs = time.perf_counter() - t1
        row["tokens_per_s"] = comp.usage.completion_tokens / secs if secs > 0 else None
        row["detail"] = (row.get("detail", "") + f"; probe: {comp.usage.completion_tokens} tokens in {secs:.2f}s").lstrip("; ")
    await llm.aclose()
    return row


def probe_backends(cfg: BackendConfig, probe: bool = True, probe_tokens: int = 32) -> list[dict[str, Any]]:
    """One row for the configured backend (checked and probed) plus the other backends' availability."""
    from . import make_backend, run_sync

    chosen = cfg.resolved_backend
    rows: list[dict[str, Any]] = []
    try:
        llm = make_backend(cfg.model_copy(update={"max_retries": min(cfg.max_retries, 1)}))
        row = run_sync(_probe_one(llm, probe, probe_tokens))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable row
        row = {"backend": chosen, "status": "unreachable" if chosen == "openai" else "error",
               "model": cfg.model, "detail": redact(f"{type(exc).__name__}: {exc}", cfg.api_key())}
    if chosen == "openai":
        row["detail"] = f"{cfg.base_url}: " + (row.get("detail") or "")
    row["configured"] = True
    rows.append(row)
    if chosen != "local":
        try:
            path = default_local_model() if not cfg.local_model else cfg.local_model
            rows.append({"backend": "local", "configured": False, "status": "available", "model": str(path).rsplit("/", 1)[-1],
                         "profile": "fewshot", "detail": "embedded llama.cpp model"})
        except Exception as exc:  # noqa: BLE001
            rows.append({"backend": "local", "configured": False, "status": "missing", "detail": str(exc)})
    if chosen != "openai":
        rows.append({"backend": "openai", "configured": False, "status": "not configured",
                     "detail": "set --base-url or OPENAI_BASE_URL"})
    if chosen != "vllm":
        have = importlib.util.find_spec("vllm") is not None
        rows.append({"backend": "vllm", "configured": False, "status": "installed" if have else "not installed",
                     "detail": "" if have else "pip install 'dataforge[vllm]' on a GPU machine"})
    return rows
