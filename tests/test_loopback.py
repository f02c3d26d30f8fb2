"""The loopback OpenAI server speaks the protocol the real clients expect (tested with the real
`openai` client and raw HTTP), sustains many concurrent connections, and injects the faults it claims."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import socket
import subprocess
import sys
import time

import openai
import pytest

from dataforge.testing import Fault, FaultPlan, LoopbackServer, default_responder


def _client(srv: LoopbackServer, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, **kw)


def test_chat_completion_models_and_usage():
    with LoopbackServer(responder=lambda body: "four words of reply") as srv:
        c = _client(srv)
        r = c.chat.completions.create(model="test", messages=[{"role": "user", "content": "say it now"}])
        assert r.choices[0].message.content == "four words of reply"
        assert r.choices[0].finish_reason == "stop"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (4, 4)  # "user: say it now" = 4 words
        t = c.completions.create(model="test", prompt="a b c")
        assert t.choices[0].text == "four words of reply" and t.usage.prompt_tokens == 3
        assert [m.id for m in c.models.list().data] == ["test", "loopback"]
        assert [("messages" in b, "prompt" in b) for b in srv.requests] == [(True, False), (False, True)]


def test_n_stop_max_tokens_and_logprobs():
    with LoopbackServer() as srv:
        c = _client(srv)
        r = c.chat.completions.create(model="test", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=5,
                                      logprobs=True, top_logprobs=2)
        assert len(r.choices) == 3 and len({ch.message.content for ch in r.choices}) == 3  # distinct samples
        assert all(ch.finish_reason == "length" and len(ch.message.content.split()) == 5 for ch in r.choices)
        assert len(r.choices[0].logprobs.content) == 5 and len(r.choices[0].logprobs.content[0].top_logprobs) == 2
        full = default_responder({"prompt": "xyz"}, 0)
        cut_at = full.split()[3]
        t = c.completions.create(model="test", prompt="xyz", stop=[cut_at], logprobs=1)
        assert t.choices[0].text == full[: full.index(cut_at)] and t.choices[0].finish_reason == "stop"
        assert len(t.choices[0].logprobs.tokens) == len(t.choices[0].logprobs.token_logprobs) > 0


def test_default_responder_is_deterministic_and_honours_json_schema():
    body = {"messages": [{"role": "user", "content": "q"}], "seed": 1}
    assert default_responder(body) == default_responder(dict(body)) != default_responder({**body, "seed": 2})
    assert 30 <= len(default_responder(body).split()) <= 60
    schema = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                               "tags": {"type": "array", "items": {"type": "string"}}}}
    out = json.loads(default_responder({**body, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}))
    assert out["score"] in range(1, 6) and isinstance(out["tags"], list)


def test_128_concurrent_connections_with_latency():
    with LoopbackServer(latency=0.3) as srv:
        def one(i: int) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("POST", "/v1/completions", body=json.dumps({"model": "t", "prompt": f"p{i}"}),
                         headers={"Content-Type": "application/json"})
            status = conn.getresponse().status
            conn.close()
            return status
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(128) as pool:
            statuses = list(pool.map(one, range(128)))
        elapsed = time.perf_counter() - t0
    assert statuses == [200] * 128
    assert srv.max_in_flight >= 64  # really served in parallel, not queued one by one
    assert elapsed < 0.3 * 128 / 8  # serial would be 38 s


@pytest.mark.parametrize("kind", ["429", "500", "malformed", "truncated", "slow", "disconnect"])
def test_each_fault_kind(kind):
    with LoopbackServer(faults=lambda body: Fault(kind, retry_after=2, slow_seconds=0.5)) as srv:
        c = _client(srv, timeout=0.2)
        try:
            r = c.chat.completions.create(model="t", messages=[{"role": "user", "content": "x"}], max_tokens=100)
        except Exception as exc:  # noqa: BLE001 - the kind decides which
            err = exc
        else:
            err = None
        assert srv.fault_counts[kind] == 1
    if kind == "429":
        assert isinstance(err, openai.RateLimitError) and err.response.headers["retry-after"] == "2"
    elif kind == "500":
        assert isinstance(err, openai.InternalServerError)
    elif kind == "malformed":
        assert isinstance(err, ValueError)  # the body is not JSON
    elif kind == "truncated":
        assert err is None and r.choices[0].finish_reason == "length"
    elif kind == "slow":
        assert isinstance(err, openai.APITimeoutError)
    else:
        assert isinstance(err, openai.APIConnectionError)


def test_fault_plan_rate_is_reproducible():
    plans = [FaultPlan(rate=0.2, seed=7) for _ in range(2)]
    draws = [[p({}) for _ in range(500)] for p in plans]
    assert draws[0] == draws[1]
    share = sum(d is not None for d in draws[0]) / 500
    assert 0.14 < share < 0.26
    with pytest.raises(ValueError):
        FaultPlan(kinds=("teapot",))


def test_runs_as_a_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dataforge.testing.loopback", "--port", str(port), "--latency", "0.01"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert f"127.0.0.1:{port}/v1" in proc.stdout.readline()
        r = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0).completions.create(
            model="t", prompt="hello")
        assert r.choices[0].text == default_responder({"prompt": "hello", "model": "t"}, 0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
