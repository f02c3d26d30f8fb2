"""Persistent request cache: a re-run, or a resume after a crash, sends no request that already has
an answer.

SQLite in WAL mode with a busy timeout, so several processes (or Ray workers) can share one file. The
key is a hash of backend, model, server host, the full prompt/messages and every sampling parameter
including the seed — never the API key. Identical requests in flight at the same time are coalesced
into one. Failed requests are not cached (they are retried on the next run).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..sqlite_store import connect_shared
from .base import LLM, Choice, Completion, GenParams, Usage, WrappedLLM

log = logging.getLogger("dataforge.llm")

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def server_host(base_url: str | None) -> str:
    """host[:port]/path of a base URL with any user:password stripped (credentials never enter keys)."""
    if not base_url:
        return ""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return host + parts.path.rstrip("/")


def request_key(backend: str, model: str, host: str, kind: str, payload: Any, params: GenParams) -> tuple[str, str]:
    """(sha256 key, canonical request JSON) for one request."""
    material = json.dumps({"backend": backend, "model": model, "host": host, "kind": kind, "input": payload,
                           "params": params.key()}, sort_keys=True, ensure_ascii=False, default=list)
    return hashlib.sha256(material.encode("utf-8")).hexdigest(), material


class RequestCache:
    """The SQLite file. One connection per process and thread (opened lazily), so the object can be
    pickled to worker processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: never share a connection across processes
            self._local, self._pid = threading.local(), os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_shared(self.path, SCHEMA)
            self._local.conn = conn
        return conn

    def get(self, key: str) -> Completion | None:
        row = self._conn().execute("SELECT response FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return Completion(choices=[_clean(Choice(**c)) for c in data["choices"]], model=data.get("model", ""),
                          usage=Usage(cached=1), cached=True)

    def put(self, key: str, backend: str, model: str, request: str, completion: Completion) -> None:
        response = json.dumps({"choices": [asdict(c) for c in completion.choices], "model": completion.model,
                               "usage": {"prompt_tokens": completion.usage.prompt_tokens,
                                         "completion_tokens": completion.usage.completion_tokens}},
                              ensure_ascii=False)
        self._conn().execute("INSERT OR REPLACE INTO completions (key, backend, model, request, response, created) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (key, backend, model, request, response, time.time()))

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _clean(choice: Choice) -> Choice:
    """An answer stored before reasoning was split off still gets its <think> block removed."""
    if choice.reasoning is None and "think>" in choice.text.lower():
        from .reasoning import split_reasoning

        choice.text, choice.reasoning, _ = split_reasoning(choice.text)
    return choice


class CachedLLM(WrappedLLM):
    """Wraps a backend: answers from the cache when it can, coalesces identical in-flight requests,
    stores every successful answer. `usage` counts cache hits in `cached` and backend work as usual."""

    def __init__(self, inner: LLM, cache: RequestCache, base_url: str | None = None):
        super().__init__(inner)
        self.usage = Usage()
        self.cache = cache
        # where the answers come from: the server (host, never credentials) or e.g. the GGUF file
        self.host = server_host(base_url) or getattr(inner, "cache_identity", "")
        self._inflight: dict[str, asyncio.Future] = {}
        self.read = True  # False: send every request (a measurement, e.g. a dry run) but still store answers

    def __getstate__(self) -> dict[str, Any]:  # in-flight futures belong to this process's event loop
        return {**self.__dict__, "_inflight": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    async def _cached(self, kind: str, payload: Any, params: GenParams) -> Completion:
        resolve = getattr(self.inner, "resolve_model", None)
        if resolve is not None and not self.inner.model:
            await resolve()
        key, material = request_key(self.inner.backend, self.inner.model, self.host, kind, payload, params)
        loop = asyncio.get_running_loop()
        while self.read:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.cached += 1
                return hit
            pending = self._inflight.get(key)
            if pending is None or pending.get_loop() is not loop:
                break
            try:  # the same request is already on its way: share its answer
                comp = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():  # the leader was cancelled, not us: try again ourselves
                    continue
                raise
            except Exception:
                self.usage.errors += 1
                raise
            self.usage.cached += 1
            return Completion(choices=comp.choices, model=comp.model, usage=Usage(cached=1), cached=True)
        fut: asyncio.Future = loop.create_future()
        self._inflight[key] = fut
        try:
            if kind == "chat":
                comp = await self.inner.chat(payload, params)
            else:
                comp = await self.inner.complete(payload, params)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            self.usage.errors += 1
            self.usage.retries += max(0, int(getattr(exc, "attempts", 1) or 1) - 1)
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        try:
            self.cache.put(key, self.inner.backend, self.inner.model, material, comp)
        except sqlite3.Error as exc:  # an answer in hand is never thrown away for a cache problem
            log.warning("request cache %s: could not store an answer (%s); continuing without it", self.cache.path, exc)
        self.usage.add(comp.usage)
        fut.set_result(comp)
        return comp

    async def chat(self, messages: list[dict[str, str]], params: GenParams = GenParams()) -> Completion:
        return await self._cached("chat", messages, params)

    async def complete(self, prompt: str, params: GenParams = GenParams()) -> Completion:
        return await self._cached("complete", prompt, params)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "cache": str(self.cache.path)}
