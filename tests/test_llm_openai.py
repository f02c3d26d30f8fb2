"""The openai backend against the real loopback HTTP server: retries (counted, honouring
Retry-After), timeouts, malformed bodies, truncation, bounded concurrency, rate limits, parameters."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from dataforge.llm import BackendConfig, GenParams, LLMError, make_llm
from dataforge.testing import Fault, LoopbackServer
from dataforge.testing.loopback import last_user_message


def _llm(srv: LoopbackServer, **kw):
    cfg = dict(backend="openai", base_url=srv.base_url, model="test", no_cache=True, retry_base_delay=0.01,
               timeout=5.0)
    cfg.update(kw)
    return make_llm(BackendConfig(**cfg))


class FailFirst:
    """Responder script: the first `k` requests for each prompt fail with `fault`, then echo the prompt."""

    def __init__(self, k: int, fault: Fault):
        self.k, self.fault, self.seen = k, fault, Counter()

    def __call__(self, body):
        prompt = last_user_message(body)
        self.seen[prompt] += 1
        return self.fault if self.seen[prompt] <= self.k else f"echo {prompt}"


def test_429_is_retried_after_retry_after():
    with LoopbackServer(responder=FailFirst(1, Fault("429", retry_after=0.6))) as srv:
        llm = _llm(srv)
        t0 = time.perf_counter()
        comp = asyncio.run(llm.complete("hello", GenParams(max_tokens=10)))
        elapsed = time.perf_counter() - t0
    assert comp.text == "echo hello"
    assert srv.request_count == 2 and llm.usage.retries == 1 and llm.usage.requests == 1
    assert elapsed >= 0.6  # the base delay is 0.01 s: only Retry-After explains the wait


@pytest.mark.parametrize("kind", ["500", "malformed", "disconnect"])
def test_server_errors_are_retried(kind):
    with LoopbackServer(responder=FailFirst(2, Fault(kind))) as srv:
        llm = _llm(srv)
        comp = asyncio.run(llm.chat([{"role": "user", "content": "q"}]))
    assert comp.text == "echo q" and srv.request_count == 3 and llm.usage.retries == 2


def test_timeout_is_retried():
    with LoopbackServer(responder=FailFirst(1, Fault("slow", slow_seconds=1.5))) as srv:
        llm = _llm(srv, timeout=0.3)
        t0 = time.perf_counter()
        comp = asyncio.run(llm.complete("slowpoke"))
    assert comp.text == "echo slowpoke" and llm.usage.retries == 1
    assert time.perf_counter() - t0 < 1.4  # gave up on the slow reply instead of waiting for it


def test_retries_exhausted_raise_llmerror_with_cause():
    with LoopbackServer(responder=lambda body: Fault("500")) as srv:
        llm = _llm(srv, max_retries=2)
        with pytest.raises(LLMError, match=r"after 3 attempt\(s\).*InternalServerError 500") as err:
            asyncio.run(llm.complete("doomed"))
    assert (err.value.reason, err.value.status, err.value.attempts) == ("server_error", 500, 3)
    assert srv.request_count == 3 and llm.usage.errors == 1 and llm.usage.requests == 0


def test_client_errors_are_not_retried():
    with LoopbackServer(responder=lambda body: Fault("400")) as srv:
        llm = _llm(srv)
        with pytest.raises(LLMError, match=r"after 1 attempt\(s\).*BadRequestError 400"):
            asyncio.run(llm.chat([{"role": "user", "content": "x"}]))
    assert srv.request_count == 1 and llm.usage.errors == 1


def test_truncated_output_is_reported():
    with LoopbackServer(responder=lambda body: "one two three four five six") as srv:
        llm = _llm(srv)
        comp = asyncio.run(llm.complete("x", GenParams(max_tokens=3)))
    assert comp.truncated and comp.text == "one two three" and comp.usage.completion_tokens == 3


def test_parameters_reach_the_server_and_replies_come_back():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with LoopbackServer() as srv:
        llm = _llm(srv)
        params = GenParams(temperature=0.3, top_p=0.9, max_tokens=7, stop=("\n\n",), n=2, seed=11, logprobs=2)
        comp = asyncio.run(llm.chat([{"role": "user", "content": "hi"}], params))
        js = asyncio.run(llm.chat([{"role": "user", "content": "hi"}], GenParams(json_schema=schema)))
        body, jbody = srv.requests
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["n"], body["seed"]) == \
        (0.3, 0.9, 7, ["\n\n"], 2, 11)
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert len(comp.choices) == 2 and all(len(c.logprobs) == 7 and len(c.logprobs[0]) == 2 for c in comp.choices)
    assert jbody["response_format"]["json_schema"]["schema"] == schema
    assert isinstance(__import__("json").loads(js.text)["a"], int)
    assert llm.usage.requests == 2 and llm.usage.completion_tokens == comp.usage.completion_tokens + js.usage.completion_tokens


def test_concurrency_is_bounded_and_used():
    with LoopbackServer(latency=0.05) as srv:
        llm = _llm(srv, concurrency=8)

        async def go():
            return await asyncio.gather(*(llm.complete(f"p{i}") for i in range(64)))
        asyncio.run(go())
    assert srv.max_in_flight == 8


def test_model_is_discovered_when_not_given():
    with LoopbackServer(models=("served-model",)) as srv:
        llm = _llm(srv, model=None)
        comp = asyncio.run(llm.complete("x"))
    assert llm.model == "served-model" and srv.requests[0]["model"] == "served-model" and comp.text


def test_requests_per_minute_limit_spaces_requests():
    with LoopbackServer() as srv:
        llm = _llm(srv, rpm=600)  # 10/s, burst capacity 50

        async def go():
            return await asyncio.gather(*(llm.complete(f"p{i}") for i in range(60)))
        t0 = time.perf_counter()
        asyncio.run(go())
        elapsed = time.perf_counter() - t0
    assert 0.8 < elapsed < 4  # 50 at once, the other 10 at 10/s


def test_profile_follows_model_name():
    with LoopbackServer() as srv:
        assert _llm(srv, model="HuggingFaceTB/SmolLM2-360M-Instruct").profile == "fewshot"
        assert _llm(srv, model="Qwen2.5-7B-Instruct").profile == "chat"
        assert _llm(srv, model="Qwen2.5-7B-Instruct", profile="fewshot").profile == "fewshot"
