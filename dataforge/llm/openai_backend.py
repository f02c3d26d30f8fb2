"""Any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, OpenAI) through `openai.AsyncOpenAI`.

Why our own retry loop: the client's built-in retries are invisible (not counted, no jitter across
hundreds of coroutines), so they are switched off and every retry here is counted in `usage.retries`.
A request that still fails becomes an `LLMError` carrying the cause; callers record it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import weakref
from dataclasses import dataclass
from typing import Any

from ..errors import DataforgeError
from .base import LLM, Choice, Completion, EndpointRefused, GenParams, LLMError, Usage
from .config import BackendConfig
from .reasoning import split_reasoning, with_reasoning_budget
from .retry import TokenBucket, backoff_delay, parse_retry_after, redact

log = logging.getLogger("dataforge.llm")
_INSTANCES: "weakref.WeakSet[OpenAIBackend]" = weakref.WeakSet()


async def close_loop_clients() -> None:
    """Close the HTTP clients opened on the running loop (`run_sync` calls this before its loop ends,
    so connections are not left to the garbage collector of a closed loop)."""
    loop = asyncio.get_running_loop()
    for backend in list(_INSTANCES):
        st = backend._state
        if st is not None and st.loop is loop:
            backend._state = None
            for client in st.clients:
                try:
                    await client.close()
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass
CONNECTIONS_PER_CLIENT = 16
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}


@dataclass
class _LoopState:
    """Things bound to one event loop (httpx pool, semaphore, limiters); rebuilt when `run_sync`
    starts a new loop."""

    loop: asyncio.AbstractEventLoop
    clients: list[Any]
    sem: asyncio.Semaphore
    rpm: TokenBucket | None
    tpm: TokenBucket | None
    model_lock: asyncio.Lock
    in_flight: list[int]
    endpoint_lock: asyncio.Lock  # the first /completions request goes alone: is the endpoint there at all?

    @property
    def client(self) -> Any:
        return self.clients[0]

    def pick(self) -> int:
        """The least busy client shard."""
        i = min(range(len(self.clients)), key=self.in_flight.__getitem__)
        self.in_flight[i] += 1
        return i


class OpenAIBackend(LLM):
    backend = "openai"

    def __init__(self, cfg: BackendConfig):
        super().__init__()
        check_base_url(cfg.base_url or "")
        self.cfg = cfg
        self.base_url = cfg.base_url
        self.model = cfg.model or ""
        self._schema_style = "json_schema"  # json_schema | json_object (llama-cpp-python) | none
        self._completions_ok: bool | None = None  # None: not tried yet; False: the server refuses it
        self._refused_why = ""
        self._state: _LoopState | None = None
        self._rng = random.Random()
        _INSTANCES.add(self)
        # limits hold across `run_sync` calls (each has its own event loop), per process
        self._rpm = TokenBucket(cfg.rpm) if cfg.rpm else None
        self._tpm = TokenBucket(cfg.tpm, capacity=cfg.tpm) if cfg.tpm else None

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes: loop state is rebuilt there
        return {**self.__dict__, "_state": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _INSTANCES.add(self)

    # -- plumbing ---------------------------------------------------------------------------------
    def _decide_profile(self):
        """--profile, else what the server says about its model (`/v1/models`, `/props`), else the name."""
        from .profile import decide, probe_server

        if self.cfg.profile:
            return decide(self.cfg.profile, (), self.model, remote=True)
        key = self.cfg.api_key()
        evidence, ids = probe_server(self.base_url or "", self.model or None,
                                     {"Authorization": f"Bearer {key}"} if key else {}, min(self.cfg.timeout, 10.0))
        if not self.model and ids:
            self.model = ids[0]  # what `resolve_model` would pick
        return decide(None, evidence, self.model, remote=True)

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            import openai
            from openai._constants import DEFAULT_CONNECTION_LIMITS

            # httpx's pool scans every connection on each request (O(pool) CPU), which made 128 in flight
            # slower than 32; several small pools keep that scan short.
            shards = max(1, -(-self.cfg.concurrency // CONNECTIONS_PER_CLIENT))
            per = -(-self.cfg.concurrency // shards)
            limits = type(DEFAULT_CONNECTION_LIMITS)(  # httpx.Limits, whichever httpx openai is built on
                max_connections=per * 2, max_keepalive_connections=per)
            clients = [openai.AsyncOpenAI(
                base_url=self.cfg.base_url,
                api_key=self.cfg.api_key() or "not-needed",  # local servers ignore it; read from env only
                max_retries=0,  # our loop below does (and counts) every retry
                timeout=self.cfg.timeout,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.cfg.timeout),
            ) for _ in range(shards)]
            self._state = _LoopState(loop, clients, asyncio.Semaphore(self.cfg.concurrency), self._rpm, self._tpm,
                                     asyncio.Lock(), [0] * shards, asyncio.Lock())
        return self._state

    async def resolve_model(self) -> str:
        """The configured model, or the server's first listed model (what `vllm serve` exposes)."""
        if self.model:
            return self.model
        st = self._loop_state()
        async with st.model_lock:
            if not self.model:
                try:
                    page = await st.client.models.list(timeout=min(self.cfg.timeout, 30))
                    ids = [m.id for m in page.data]
                except Exception as exc:
                    raise LLMError(f"no --model given and listing models at {self.base_url} failed: "
                                   f"{self._describe(exc)}") from None
                if not ids:
                    raise LLMError(f"no --model given and {self.base_url} lists no models")
                self.model = ids[0]
        return self.model

    async def list_models(self) -> list[str]:
        st = self._loop_state()
        page = await st.client.models.list(timeout=min(self.cfg.timeout, 30))
        return [m.id for m in page.data]

    def _describe(self, exc: BaseException) -> str:
        status = getattr(exc, "status_code", None)
        msg = f"{type(exc).__name__}{f' {status}' if status else ''}: {exc}"
        return redact(msg, self.cfg.api_key())

    @staticmethod
    def _retryable(exc: BaseException) -> tuple[bool, float | None]:
        import openai

        if isinstance(exc, openai.APIStatusError):
            retry_after = parse_retry_after({k.lower(): v for k, v in exc.response.headers.items()})
            return exc.status_code in RETRY_STATUS or exc.status_code >= 500, retry_after
        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, asyncio.TimeoutError)):
            return True, None
        if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
            return True, None  # a malformed body from a flaky proxy/server: ask again
        try:
            from pydantic import ValidationError
        except ImportError:  # pragma: no cover
            return False, None
        return isinstance(exc, ValidationError), None

    async def _request(self, kind: str, payload: dict[str, Any], est_tokens: int) -> tuple[dict[str, Any], int]:
        """Send with bounded concurrency, rate limits and retries; returns (response JSON, retries).

        Uses the client's generic `post` (its documented route for any endpoint) and parses the JSON
        here: the typed `create()` costs ~0.2 ms more CPU per request (1.3 vs 1.1 ms measured) in
        reflection over parameter and response types; on 2 cores CPU per request bounds throughput."""
        st = self._loop_state()
        path = "/chat/completions" if kind == "chat" else "/completions"
        options = {"timeout": self.cfg.timeout}
        attempt = 0
        async with st.sem:
            while True:
                if st.rpm:
                    await st.rpm.acquire(1)
                if st.tpm:
                    await st.tpm.acquire(est_tokens)
                shard = st.pick()
                try:
                    try:
                        text = await st.clients[shard].post(path, cast_to=str, body=payload, options=options)
                    finally:
                        st.in_flight[shard] -= 1
                    data = json.loads(text)
                    if not isinstance(data, dict) or not data.get("choices"):
                        raise json.JSONDecodeError("response has no choices", text[:200], 0)
                    return data, attempt
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified below; nothing escapes unrecorded
                    if "response_format" in payload and _refuses_format(exc):
                        raise _FormatRefused(self._describe(exc)[:160]) from None
                    if kind == "complete" and _refuses_completions(exc):
                        raise EndpointRefused(f"{self.base_url} refuses /completions for {self.model!r} "
                                              f"({self._describe(exc)[:200]})") from None
                    retry, retry_after = self._retryable(exc)
                    if not retry or attempt >= self.cfg.max_retries:
                        self.usage.errors += 1
                        self.usage.retries += attempt
                        err = LLMError(f"{kind} request to {self.base_url} failed after {attempt + 1} attempt(s): "
                                       f"{self._describe(exc)}")
                        # machine-readable cause for callers that count failures by reason; the original
                        # exception is not chained (its repr may quote part of the API key)
                        err.reason, err.status, err.attempts = _reason(exc), getattr(exc, "status_code", None), attempt + 1
                        raise err from None
                    delay = backoff_delay(attempt, self.cfg.retry_base_delay, self.cfg.retry_max_delay, retry_after, self._rng)
                    log.debug("retry %d/%d in %.2fs: %s", attempt + 1, self.cfg.max_retries, delay, self._describe(exc))
                    attempt += 1
                    await asyncio.sleep(delay)

    # -- the interface ----------------------------------------------------------------------------
    def _common(self, params: GenParams) -> dict[str, Any]:
        p: dict[str, Any] = {"model": self.model, "temperature": params.temperature, "top_p": params.top_p,
                             "max_tokens": params.max_tokens}
        if params.stop:
            p["stop"] = list(params.stop)  # (OpenAI itself takes at most 4; vLLM and llama.cpp take more)
        if params.n != 1:
            p["n"] = params.n
        if params.seed is not None:
            p["seed"] = params.seed
        if params.json_schema is not None and self._schema_style != "none":
            p["response_format"] = self._response_format(params.json_schema)
        return p

    async def chat(self, messages: list[dict[str, str]], params: GenParams = GenParams()) -> Completion:
        return await with_reasoning_budget(self, lambda p: self._chat_once(messages, p), params)

    async def complete(self, prompt: str, params: GenParams = GenParams()) -> Completion:
        if self._completions_ok is False:
            raise EndpointRefused(self._refused_why)
        if self._completions_ok is None:
            async with self._loop_state().endpoint_lock:  # one request finds out; the others wait for it
                if self._completions_ok is None:
                    try:
                        comp = await self._complete_budgeted(prompt, params)
                    except EndpointRefused as exc:
                        self._completions_ok, self._refused_why = False, str(exc)
                        raise
                    self._completions_ok = True
                    return comp
            if self._completions_ok is False:
                raise EndpointRefused(self._refused_why)
        return await self._complete_budgeted(prompt, params)

    async def _complete_budgeted(self, prompt: str, params: GenParams) -> Completion:
        return await with_reasoning_budget(self, lambda p: self._complete_once(prompt, p), params)

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's ``json_schema`` form (strict where the schema allows: hosted APIs then follow it
        exactly; vLLM takes it too), or llama-cpp-python's ``json_object`` + ``schema`` for servers that
        refused the first."""
        if self._schema_style == "json_object":
            return {"type": "json_object", "schema": schema}
        from .structured import strict_variant

        strict = strict_variant(schema)
        spec = {"name": "output", "schema": strict, "strict": True} if strict else {"name": "output", "schema": schema}
        return {"type": "json_schema", "json_schema": spec}

    async def _send(self, kind: str, payload: dict[str, Any], est: int) -> tuple[dict[str, Any], int]:
        """`_request`, stepping down the structured-output form once per refusal (json_schema →
        json_object + schema → none: the prompt, validation and repair still hold)."""
        while True:
            try:
                return await self._request(kind, payload, est)
            except _FormatRefused as exc:
                self._schema_style = "json_object" if self._schema_style == "json_schema" else "none"
                log.warning("%s refuses response_format %s (%s); using %s from now on", self.base_url,
                            payload["response_format"].get("type"), exc, self._schema_style)
                if self._schema_style == "none":
                    payload.pop("response_format")
                else:
                    payload["response_format"] = self._response_format(payload["response_format"].get("schema") or
                                                                       payload["response_format"]["json_schema"]["schema"])

    async def _chat_once(self, messages: list[dict[str, str]], params: GenParams) -> Completion:
        await self.resolve_model()
        payload = self._common(params)
        payload["messages"] = messages
        if params.logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = params.logprobs
        est = sum(len(m.get("content") or "") for m in messages) // 4 + params.max_tokens * params.n
        data, retries = await self._send("chat", payload, est)
        choices = []
        for c in sorted(data["choices"], key=lambda c: c.get("index", 0)):
            content = ((c.get("logprobs") or {}).get("content")) or None
            lps = None
            if content:
                lps = [({t["token"]: t["logprob"] for t in tok["top_logprobs"]} if tok.get("top_logprobs")
                        else {tok["token"]: tok["logprob"]}) for tok in content]
            message = c.get("message") or {}
            text, reasoning, _ = split_reasoning(message.get("content"), message)
            choices.append(Choice(text=text, finish_reason=c.get("finish_reason") or "stop", logprobs=lps,
                                  reasoning=reasoning))
        return self._finish(data, choices, retries)

    async def _complete_once(self, prompt: str, params: GenParams) -> Completion:
        await self.resolve_model()
        payload = self._common(params)
        payload["prompt"] = prompt
        if params.logprobs:
            payload["logprobs"] = params.logprobs
        est = len(prompt) // 4 + params.max_tokens * params.n
        data, retries = await self._send("complete", payload, est)
        choices = []
        for c in sorted(data["choices"], key=lambda c: c.get("index", 0)):
            top = (c.get("logprobs") or {}).get("top_logprobs")
            lps = [dict(d) if d else {} for d in top] if top else None
            text, reasoning, _ = split_reasoning(c.get("text"), c)
            choices.append(Choice(text=text, finish_reason=c.get("finish_reason") or "stop", logprobs=lps,
                                  reasoning=reasoning))
        return self._finish(data, choices, retries)

    def _finish(self, data: dict[str, Any], choices: list[Choice], retries: int) -> Completion:
        u = data.get("usage") or {}
        usage = Usage(prompt_tokens=int(u.get("prompt_tokens") or 0), completion_tokens=int(u.get("completion_tokens") or 0),
                      requests=1, retries=retries)
        self.usage.add(usage)
        return Completion(choices=choices, model=data.get("model") or self.model, usage=usage)

    async def aclose(self) -> None:
        st, self._state = self._state, None
        if st is not None and st.loop is asyncio.get_running_loop():
            for client in st.clients:
                await client.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": self.base_url, "concurrency": self.cfg.concurrency}


def _reason(exc: BaseException) -> str:
    """A short failure category: rate_limited | server_error | client_error | timeout | connection | malformed."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return "rate_limited" if code == 429 else "server_error" if code >= 500 else "client_error"
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    return "malformed"


_REFUSAL_WORDS = re.compile(r"(?i)chat model|not supported|unsupported|chat/completions|does not support|"
                            r"only.*chat|legacy|not (?:available|enabled|implemented)")


def _refuses_completions(exc: BaseException) -> bool:
    """Does this error mean the server offers no raw completions for this model? Hosted chat APIs answer
    404 ("This is a chat model and not supported in the v1/completions endpoint"), gateways 404/405/501
    for a route they lack, others 400 naming the endpoint."""
    import openai

    if not isinstance(exc, openai.APIStatusError):
        return False
    if exc.status_code in (404, 405, 501):
        return True
    return exc.status_code in (400, 422) and bool(_REFUSAL_WORDS.search(str(exc)))


class _FormatRefused(Exception):
    """The server does not take this form of response_format (llama-cpp-python refuses json_schema)."""


def _refuses_format(exc: BaseException) -> bool:
    import openai

    return (isinstance(exc, openai.APIStatusError) and exc.status_code in (400, 422, 500)
            and "response_format" in str(exc) and not _refuses_completions_only(exc))


def _refuses_completions_only(exc: BaseException) -> bool:
    return "v1/completions endpoint" in str(exc)


def check_base_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):  # a typo here would otherwise surface as retries
        raise DataforgeError(f"--base-url must start with http:// or https:// (got {url!r})")
