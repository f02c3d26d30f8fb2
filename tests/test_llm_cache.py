"""The SQLite request cache: a re-run sends no request that already has an answer, identical requests
in flight are sent once, keys follow every parameter, and API keys never reach the file or the logs."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import sqlite3

import pytest

from dataforge.llm import BackendConfig, GenParams, LLMError, make_llm
from dataforge.llm.cache import RequestCache, server_host
from dataforge.testing import Fault, LoopbackServer

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"


def _cfg(srv: LoopbackServer, cache, **kw) -> BackendConfig:
    return BackendConfig(backend="openai", base_url=srv.base_url, model="test", cache_path=str(cache),
                         retry_base_delay=0.01, **kw)


async def _batch(llm, prompts, params=GenParams(max_tokens=20)):
    return await asyncio.gather(*(llm.complete(p, params) for p in prompts))


def test_rerun_is_answered_from_the_cache(tmp_path):
    cache = tmp_path / "req.sqlite"
    prompts = [f"prompt {i}" for i in range(20)]
    with LoopbackServer() as srv:
        first = asyncio.run(_batch(make_llm(_cfg(srv, cache)), prompts))
        assert srv.request_count == 20
        llm2 = make_llm(_cfg(srv, cache))  # a new process-level object: the resume after a crash
        second = asyncio.run(_batch(llm2, prompts))
        assert srv.request_count == 20  # nothing re-sent
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached for c in second) and llm2.usage.cached == 20 and llm2.usage.requests == 0


def test_key_covers_params_seed_model_and_kind(tmp_path):
    cache = tmp_path / "req.sqlite"
    with LoopbackServer() as srv:
        llm = make_llm(_cfg(srv, cache))

        async def go():
            await llm.complete("same", GenParams(seed=1))
            await llm.complete("same", GenParams(seed=2))
            await llm.complete("same", GenParams(seed=1, temperature=0.1))
            await llm.chat([{"role": "user", "content": "same"}], GenParams(seed=1))
            await llm.complete("same", GenParams(seed=1))  # the only repeat
        asyncio.run(go())
        assert srv.request_count == 4 and llm.usage.cached == 1
        other = make_llm(_cfg(srv, cache).model_copy(update={"model": "loopback"}))
        asyncio.run(other.complete("same", GenParams(seed=1)))
        assert srv.request_count == 5


def test_identical_inflight_requests_are_coalesced(tmp_path):
    with LoopbackServer(latency=0.2) as srv:
        llm = make_llm(_cfg(srv, tmp_path / "c.sqlite"))
        out = asyncio.run(_batch(llm, ["dup"] * 10 + ["other"]))
    assert srv.request_count == 2
    assert len({c.text for c in out[:10]}) == 1 and llm.usage.cached == 9 and llm.usage.requests == 2


def test_failures_are_not_cached(tmp_path):
    cache = tmp_path / "c.sqlite"
    with LoopbackServer(responder=lambda b: Fault("500")) as srv:
        llm = make_llm(_cfg(srv, cache, max_retries=0))
        with pytest.raises(LLMError):
            asyncio.run(llm.complete("x"))
        assert llm.usage.errors == 1
    with LoopbackServer(responder=lambda b: "fine now") as srv:
        assert asyncio.run(make_llm(_cfg(srv, cache)).complete("x")).text == "fine now"
        assert srv.request_count == 1


def test_no_cache_sends_every_time(tmp_path):
    with LoopbackServer() as srv:
        llm = make_llm(_cfg(srv, tmp_path / "c.sqlite", no_cache=True))
        asyncio.run(_batch(llm, ["a", "a", "a"]))
        assert srv.request_count == 3 and not (tmp_path / "c.sqlite").exists()


def _worker(path: str, base_url: str, start: int) -> None:
    cfg = BackendConfig(backend="openai", base_url=base_url, model="test", cache_path=path)
    asyncio.run(_batch(make_llm(cfg), [f"p{i}" for i in range(start, start + 30)]))


def test_several_processes_share_one_cache(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    with LoopbackServer() as srv:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(path, srv.base_url, s)) for s in (0, 15)]  # overlapping halves
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        sent = srv.request_count
        assert 45 <= sent <= 60  # overlap may race, but every distinct prompt got an answer
        assert len(RequestCache(path)) == 45
        _worker(path, srv.base_url, 0)
        assert srv.request_count == sent


def test_api_key_never_reaches_cache_logs_or_errors(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "c.sqlite"
    calls = []

    def first_fails(body):  # one retry, so the retry log line is written too
        calls.append(1)
        return Fault("500") if len(calls) == 1 else "ok"
    with LoopbackServer(responder=first_fails) as srv:
        cfg = _cfg(srv, cache)
        llm = make_llm(cfg)
        asyncio.run(_batch(llm, ["a", "b"]))
        assert llm.inner.cfg.api_key() == SECRET  # it was really in use
    assert "retry 1/" in caplog.text
    with LoopbackServer(responder=lambda b: Fault("401")) as srv:  # quotes the key's ends, as OpenAI does
        with pytest.raises(LLMError, match="401") as err:
            asyncio.run(make_llm(_cfg(srv, cache)).complete("x"))
    blobs = b"".join(p.read_bytes() for p in tmp_path.glob("c.sqlite*"))
    assert len(blobs) > 0 and SECRET.encode() not in blobs
    assert SECRET not in caplog.text and SECRET[:10] not in str(err.value) and SECRET[-4:] not in str(err.value)
    out, errout = capfd.readouterr()
    assert SECRET not in out + errout
    assert SECRET not in cfg.model_dump_json()
    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT request FROM completions").fetchall()
    assert rows and all(SECRET not in r[0] for r in rows)


def test_server_host_strips_credentials():
    assert server_host("https://user:pw@api.example.com:8443/v1/") == "api.example.com:8443/v1"
    assert server_host(None) == ""


def test_cached_llm_survives_pickling_to_a_worker(tmp_path):
    import pickle

    with LoopbackServer() as srv:
        llm = make_llm(_cfg(srv, tmp_path / "c.sqlite"))
        asyncio.run(llm.complete("a"))
        clone = pickle.loads(pickle.dumps(llm))  # what Ray does with a task argument
        assert asyncio.run(clone.complete("a")).cached and not asyncio.run(clone.complete("b")).cached
        assert srv.request_count == 2


def test_cancelled_leader_does_not_cancel_the_waiters(tmp_path):
    with LoopbackServer(latency=0.3) as srv:
        llm = make_llm(_cfg(srv, tmp_path / "c.sqlite"))

        async def go():
            leader = asyncio.create_task(llm.complete("same"))
            await asyncio.sleep(0.05)
            waiter = asyncio.create_task(llm.complete("same"))
            await asyncio.sleep(0.05)
            leader.cancel()
            return await waiter
        comp = asyncio.run(go())
    assert comp.text and not comp.cached and srv.request_count == 2  # the waiter sent it itself
