"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, benchmarks and offline demos.

Why a server and not a mock: the client code under test (connection pooling, timeouts, retries,
Retry-After, JSON parsing) only proves itself against real sockets and real HTTP. Replies come from a
`responder(body) -> str | list[str] | dict | Fault` that the test writes as a script; the default one
gives deterministic, plausible text derived from a hash of the prompt.

    with LoopbackServer(latency=0.1, faults=FaultPlan(rate=0.2)) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")

Speaks ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models`` with usage
counts, ``finish_reason``, ``n`` > 1, ``stop``, ``max_tokens`` (cut off → ``"length"``) and logprobs.

A `HostedAPI` makes it behave like the hosted APIs and reasoning servers users point dataforge at, as
strictly as they do: a chat-only model (``/v1/completions`` answered 404 with OpenAI's own message),
no log-probabilities (ignored, or refused with 400), thinking (``<think>…</think>`` in the content,
or a ``reasoning_content`` / ``reasoning`` field) that counts against ``max_tokens`` like real
thinking does, and ``json_schema`` strict mode (a schema that strict mode does not accept is refused
with 400, as OpenAI refuses it). 429s carry ``Retry-After`` and ``retry-after-ms`` (see `Fault`).
Run standalone: ``python -m dataforge.testing.loopback --port 8000 --latency 0.1``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

from .hosted import HostedAPI

FAULT_KINDS = ("429", "500", "slow", "malformed", "truncated")
ALL_FAULT_KINDS = (*FAULT_KINDS, "disconnect", "400", "401")

_WORDS = (
    "data model prompt answer example task question result method system value process step detail "
    "context reason summary list table number string function record sample output input format rule "
    "topic source quality test review change option feature signal pattern score design plan idea "
    "simple clear useful careful short long first next final main common specific general different"
).split()
_VERBS = "explains describes lists compares shows gives checks builds measures improves keeps uses".split()


@dataclass(frozen=True)
class Fault:
    """One injected failure. Kinds: 429 (with Retry-After), 500, slow (reply after `slow_seconds`),
    malformed (HTTP 200 with a broken JSON body), truncated (text cut, finish_reason "length"),
    disconnect (connection closed without a reply), 400 (a request the server refuses: not retryable),
    401 (rejects the key and, like some real servers, quotes part of it in the error message)."""

    kind: str
    retry_after: float = 0.05
    slow_seconds: float = 5.0
    retry_headers: tuple[str, ...] = ("Retry-After", "retry-after-ms")  # which a 429 carries


def _thinking(body: dict[str, Any], words: int) -> str:
    rng = _rng_for(body, 7777)
    return "Okay, let me think. " + " ".join(rng.choice(_WORDS) for _ in range(max(words - 4, 1)))


@dataclass
class FaultPlan:
    """Inject faults into a random `rate` share of requests, reproducibly from `seed`."""

    rate: float = 0.2
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    retry_after: float = 0.05
    slow_seconds: float = 5.0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(ALL_FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_FAULT_KINDS}")
        self._rng = random.Random(self.seed)

    def __call__(self, body: dict[str, Any]) -> Fault | None:
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
        return Fault(kind, retry_after=self.retry_after, slow_seconds=self.slow_seconds)


Responder = Callable[[dict[str, Any]], Union[str, list, dict, Fault]]
FaultSource = Union[FaultPlan, Callable[[dict[str, Any]], Union[Fault, str, None]], None]


def prompt_of(body: dict[str, Any]) -> str:
    """The request's prompt as one string (chat messages joined by role)."""
    if "messages" in body:
        return "\n".join(f"{m.get('role', 'user')}: {_content_text(m.get('content'))}" for m in body["messages"])
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))


def last_user_message(body: dict[str, Any]) -> str:
    """The last user message (chat) or the raw prompt (completion): what a responder script matches on."""
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            return _content_text(m.get("content"))
    return prompt_of(body)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _rng_for(body: dict[str, Any], choice: int) -> random.Random:
    key = json.dumps([prompt_of(body), body.get("seed"), body.get("temperature"), choice], sort_keys=True)
    return random.Random(hashlib.sha256(key.encode()).hexdigest())


def _json_for_schema(schema: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A value that satisfies a (simple) JSON schema: enough for structured-output round trips."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "anyOf" in schema:  # e.g. a nullable field: the first real alternative
        options = [o for o in schema["anyOf"] if o.get("type") != "null"] or schema["anyOf"]
        return _json_for_schema(options[0], rng, depth + 1)
    typ = schema.get("type", "object")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "string")
    if typ == "object":
        props = schema.get("properties", {})
        return {k: _json_for_schema(v, rng, depth + 1) for k, v in props.items()}
    if typ == "array":
        return [_json_for_schema(schema.get("items", {"type": "string"}), rng, depth + 1) for _ in range(2)]
    if typ == "integer":
        lo, hi = schema.get("minimum", 1), schema.get("maximum", 10)
        return rng.randint(int(lo), int(hi))
    if typ == "number":
        lo, hi = schema.get("minimum", 0.0), schema.get("maximum", 1.0)
        return round(rng.uniform(lo, hi), 3)
    if typ == "boolean":
        return rng.random() < 0.5
    return " ".join(rng.choice(_WORDS) for _ in range(4))


def default_responder(body: dict[str, Any], choice: int = 0) -> str:
    """Deterministic plausible text (~40 words) from a hash of the prompt, seed and choice index.
    When JSON is requested, a JSON object (matching the schema where one is given)."""
    rng = _rng_for(body, choice)
    fmt = body.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {"type": "object", "properties": {"answer": {"type": "string"}}}
        return json.dumps(_json_for_schema(schema, rng))
    sentences = []
    while sum(len(s.split()) for s in sentences) < 40:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 6))]
        words.insert(2, rng.choice(_VERBS))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def count_tokens(text: str) -> int:
    """Loopback 'tokens' are whitespace-separated words: simple, deterministic, good enough for accounting."""
    return len(text.split())


def _cut(text: str, stops: list[str], max_tokens: int | None) -> tuple[str, str]:
    """Apply stop sequences, then the max_tokens budget; return (text, finish_reason)."""
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    words = re.findall(r"\S+\s*", text)
    if max_tokens is not None and len(words) > max_tokens:
        return "".join(words[:max_tokens]).rstrip(), "length"
    return text, "stop"


def _token_logprobs(text: str, k: int, rng: random.Random) -> list[tuple[str, float, list[tuple[str, float]]]]:
    out = []
    for tok in re.findall(r"\S+\s*", text):
        lp = -abs(rng.gauss(0.3, 0.3))
        alts = [(tok, lp)] + [(rng.choice(_WORDS) + " ", lp - 0.5 - i) for i in range(max(k - 1, 0))]
        out.append((tok, lp, alts[: max(k, 1)]))
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    owner: "LoopbackServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # clients that timed out or hung up: expected
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # else Nagle + the client's delayed ACK add ~40 ms to small replies
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests instead
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n" + payload)  # headers and body in one write: one TCP segment
        self.flush_headers()

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, typ: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": typ, "code": str(status)}}, headers)

    # -- routes -----------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "loopback",
                                                           **owner.hosted.models.get(m, {})} for m in owner.models]})
        elif self.path.rstrip("/") == "/props" and owner.hosted.props is not None:
            self._json(200, owner.hosted.props)
        elif self.path.rstrip("/") in ("/health", "/v1/health"):
            self._json(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        path = self.path.rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._error(400, "request body is not JSON", "invalid_request_error")
            return
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._error(404, f"no route {self.path}", "not_found")
            return
        owner._seen(path)
        chat = path.endswith("chat/completions")
        if chat and not isinstance(body.get("messages"), list):
            self._error(400, "'messages' is required", "invalid_request_error")
            return
        if not chat and "prompt" not in body:
            self._error(400, "'prompt' is required", "invalid_request_error")
            return
        if body.get("stream"):
            self._error(400, "streaming is not supported by the loopback server", "invalid_request_error")
            return
        refusal = owner.hosted.refusal(body, chat)
        if refusal is not None:
            owner._enter(body)
            owner._leave()
            self._error(*refusal)
            return
        owner._enter(body)
        try:
            self._answer(owner, body, chat)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout): fine
            pass
        finally:
            owner._leave()

    def _answer(self, owner: "LoopbackServer", body: dict[str, Any], chat: bool) -> None:
        fault = owner._fault_for(body)
        if owner.latency:
            time.sleep(owner.latency)
        reply: Any = None
        if fault is None:
            reply = owner.responder(body)
            if isinstance(reply, Fault):
                fault = reply
                owner._count_fault(fault.kind)
        if fault is not None:
            if fault.kind == "429":
                values = {"Retry-After": f"{fault.retry_after:g}", "retry-after-ms": str(int(fault.retry_after * 1000))}
                self._error(429, "rate limited (injected)", "rate_limit_error",
                            {k: v for k, v in values.items() if k in fault.retry_headers})
                return
            if fault.kind == "401":
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                self._error(401, f"Incorrect API key provided: {key[:10]}****{key[-4:]}", "invalid_api_key")
                return
            if fault.kind == "400":
                self._error(400, "bad request (injected)", "invalid_request_error")
                return
            if fault.kind == "500":
                self._error(500, "internal error (injected)", "server_error")
                return
            if fault.kind == "malformed":
                self._send(200, b'{"id": "cmpl-broken", "choices": [{"index": 0, "mess')
                return
            if fault.kind == "disconnect":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault.kind == "slow":
                time.sleep(fault.slow_seconds)
        if reply is None or isinstance(reply, Fault):
            reply = owner.responder(body)
        if isinstance(reply, Fault):  # a scripted fault that asked for slow/truncated: answer normally after it
            reply = [default_responder(body, i) for i in range(int(body.get("n") or 1))]
        self._json(200, owner._build(body, chat, reply, truncate=fault is not None and fault.kind == "truncated"))


class LoopbackServer:
    """A threaded OpenAI-protocol server on 127.0.0.1; use as a context manager.

    `responder(body)` returns the reply text (str), one text per choice (list), a dict
    ``{"text"|"choices": ..., "finish_reason": ...}``, or a `Fault` to fail this request on purpose.
    `faults` injects failures independently of the responder (a `FaultPlan` or a callable returning a
    `Fault`, a kind name, or None). `latency` seconds are added to every request.
    """

    def __init__(self, responder: Responder | None = None, latency: float = 0.0, faults: FaultSource = None,
                 port: int = 0, host: str = "127.0.0.1", models: tuple[str, ...] = ("test", "loopback"),
                 hosted: HostedAPI | None = None):
        self.hosted = hosted or HostedAPI()
        self.responder: Responder = responder or (lambda body: [default_responder(body, i) for i in range(int(body.get("n") or 1))])
        self.latency = latency
        self.faults = faults
        self.models = models
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self.fault_counts: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()  # POSTs per route, refused ones included
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None
        self._ids = 0

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LoopbackServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"loopback:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    # -- observation ------------------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """A copy of every JSON body received on the completion routes, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self.fault_counts.clear()
            self.paths.clear()
            self.max_in_flight = 0

    # -- internals used by the handler ------------------------------------------------------------
    def _enter(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _seen(self, path: str) -> None:
        with self._lock:
            self.paths[path] += 1

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self.fault_counts[kind] += 1

    def _fault_for(self, body: dict[str, Any]) -> Fault | None:
        if self.faults is None:
            return None
        fault = self.faults(body)
        if isinstance(fault, str):
            fault = Fault(fault)
        if fault is not None:
            self._count_fault(fault.kind)
        return fault

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _build(self, body: dict[str, Any], chat: bool, reply: Any, truncate: bool = False) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        finish_override = None
        if isinstance(reply, dict):
            finish_override = reply.get("finish_reason")
            reply = reply.get("choices", reply.get("text", ""))
        texts = [reply] * n if isinstance(reply, str) else [str(t) for t in reply]
        texts = (texts * n)[:n] if len(texts) < n else texts[:n]
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        prompt_tokens = count_tokens(prompt_of(body))
        choices, completion_tokens = [], 0
        think = self.hosted.think
        for i, full in enumerate(texts):
            reasoning = None
            if think and (think == "inline" or not chat):  # completions have no reasoning field: always inline
                full = f"<think>\n{_thinking(body, self.hosted.think_words)}\n</think>\n\n{full}"
            elif think:
                reasoning = _thinking(body, self.hosted.think_words)
            if truncate:  # injected: cut in the middle, as a server that hit its token budget would
                words = full.split()
                text, finish = " ".join(words[: max(1, len(words) // 2)]), "length"
            elif reasoning is not None:  # the thinking spends the budget first, as real thinking does
                used = count_tokens(reasoning)
                if max_tokens is not None and used >= max_tokens:
                    reasoning, text, finish = " ".join(reasoning.split()[:max_tokens]), "", "length"
                else:
                    text, finish = _cut(full, stops, None if max_tokens is None else max_tokens - used)
                completion_tokens += count_tokens(reasoning)
            else:
                text, finish = _cut(full, stops, max_tokens)
            finish = finish_override or finish
            completion_tokens += count_tokens(text)
            choice = self._choice(body, chat, i, text, finish)
            if reasoning is not None:
                choice["message"][think] = reasoning
            choices.append(choice)
        model = body.get("model") or self.models[0]
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-loop{self._next_id()}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "loopback",
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _choice(self, body: dict[str, Any], chat: bool, i: int, text: str, finish: str) -> dict[str, Any]:
        rng = _rng_for(body, 1000 + i)
        if chat:
            choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": text},
                                      "finish_reason": finish, "logprobs": None}
            if body.get("logprobs") and self.hosted.logprobs == "yes":
                k = int(body.get("top_logprobs") or 1)
                choice["logprobs"] = {"content": [
                    {"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                     "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in alts]}
                    for tok, lp, alts in _token_logprobs(text, k, rng)]}
            return choice
        choice = {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
        if body.get("logprobs") is not None and body.get("logprobs") is not False and self.hosted.logprobs == "yes":
            k = int(body["logprobs"])
            toks = _token_logprobs(text, k, rng)
            offsets, pos = [], 0
            for tok, _, _ in toks:
                offsets.append(pos)
                pos += len(tok)
            choice["logprobs"] = {"tokens": [t for t, _, _ in toks], "token_logprobs": [lp for _, lp, _ in toks],
                                  "top_logprobs": [dict(alts) for _, _, alts in toks], "text_offset": offsets}
        return choice


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dataforge.testing.loopback",
                                 description="OpenAI-protocol loopback server with deterministic replies.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that get an injected fault")
    ap.add_argument("--fault-kinds", default=",".join(FAULT_KINDS), help=f"comma-separated, from {ALL_FAULT_KINDS}")
    ap.add_argument("--slow-seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    faults = (FaultPlan(rate=args.fault_rate, kinds=tuple(k for k in args.fault_kinds.split(",") if k),
                        seed=args.seed, slow_seconds=args.slow_seconds) if args.fault_rate > 0 else None)
    srv = LoopbackServer(latency=args.latency, faults=faults, port=args.port, host=args.host)
    print(f"loopback OpenAI server on http://{args.host}:{srv.port}/v1 (latency {args.latency}s, "
          f"fault rate {args.fault_rate})", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv._httpd.server_close()


if __name__ == "__main__":
    main()
