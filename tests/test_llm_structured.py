"""Structured output: JSON asked with the schema, parsed with pydantic, repaired with the
json_repair template when broken, and truncation reported instead of parsed from a fragment."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from dataforge.llm import BackendConfig, GenParams, make_llm
from dataforge.llm.structured import extract_json, generate_structured
from dataforge.prompts import render
from dataforge.testing import LoopbackServer
from dataforge.testing.loopback import last_user_message


class Verdict(BaseModel):
    score: int
    reason: str


def _llm(srv, **kw):
    return make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True, **kw))


def test_extract_json_tolerates_fences_and_prose():
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": {"b": "}"}} hope that helps') == {"a": {"b": "}"}}
    assert extract_json("[1, 2] trailing") == [1, 2]
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_valid_json_first_time_sends_the_schema():
    with LoopbackServer(responder=lambda b: '{"score": 4, "reason": "clear"}') as srv:
        res = asyncio.run(generate_structured(_llm(srv), [{"role": "user", "content": "judge"}], Verdict))
        body = srv.requests[0]
    assert res.ok and res.value == Verdict(score=4, reason="clear") and res.attempts == 1 and not res.repaired
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["score", "reason"]


def test_broken_json_is_repaired_with_the_repair_template():
    def script(body):
        msg = last_user_message(body)
        if "Reply to correct" in msg:  # the chat json_repair template
            assert "{score: 4, 'reason': 'ok'" in msg and "score" in msg
            return '{"score": 4, "reason": "ok"}'
        return "Here you go: {score: 4, 'reason': 'ok'"
    with LoopbackServer(responder=script) as srv:
        res = asyncio.run(generate_structured(_llm(srv), [{"role": "user", "content": "judge this"}], Verdict))
        assert srv.request_count == 2
        assert srv.requests[1]["messages"][0]["role"] == "system"  # from the template's front matter
    assert res.ok and res.repaired and res.attempts == 2 and res.value.score == 4


def test_schema_violation_is_repaired_then_given_up_with_reason():
    with LoopbackServer(responder=lambda b: '{"score": "high"}') as srv:
        res = asyncio.run(generate_structured(_llm(srv), "raw prompt", Verdict, max_repairs=2))
        assert srv.request_count == 3
    assert not res.ok and res.reason == "schema" and "score" in res.error and res.attempts == 3


def test_truncated_json_is_retried_with_more_room_then_reported():
    long_reply = json.dumps({"score": 3, "reason": " ".join(["word"] * 40)})
    with LoopbackServer(responder=lambda b: long_reply) as srv:
        res = asyncio.run(generate_structured(_llm(srv), "p", Verdict, GenParams(max_tokens=8)))
        budgets = [r["max_tokens"] for r in srv.requests]
    assert budgets == [8, 16] and not res.ok and res.truncated and res.reason == "truncated"
    with LoopbackServer(responder=lambda b: long_reply) as srv:
        res = asyncio.run(generate_structured(_llm(srv), "p", Verdict, GenParams(max_tokens=30)))
    assert res.ok and res.attempts == 2 and res.value.score == 3  # 30 words cut it, 60 fit


def test_fewshot_repair_template_renders_the_keys():
    p = render("json_repair", "fewshot", output="{a: 1", error="bad", schema="{}", keys=["a", "b"])
    assert p.text.endswith("Keys: a, b\nBroken: {a: 1\nFixed:") and not p.is_chat and p.stop
