"""The loopback server's hosted-API behaviours, each against the real `openai` client, and what the
client does about them: chat-only models, no log-probabilities, thinking in the content or in a field,
429 with Retry-After / retry-after-ms, json_schema strict mode, and the server's own account of its model."""

from __future__ import annotations

import json
import logging
import time

import openai
import pytest

from dataforge.llm import BackendConfig, GenParams, make_llm, run_sync
from dataforge.llm.reasoning import split_reasoning
from dataforge.llm.structured import generate_structured, strict_variant
from dataforge.prompts import render
from dataforge.testing.hosted import HostedAPI, strict_schema_error
from dataforge.testing.loopback import Fault, LoopbackServer


def _client(srv: LoopbackServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)


def _llm(srv: LoopbackServer, model: str = "test", **kw):
    return make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model=model, no_cache=True, **kw))


# ------------------------------------------------------------------ the server's behaviours

def test_chat_only_model_refuses_completions_as_openai_does():
    with LoopbackServer(hosted=HostedAPI(chat_only=True)) as srv:
        c = _client(srv)
        with pytest.raises(openai.NotFoundError) as err:
            c.completions.create(model="gpt-4o-mini", prompt="Say hi", max_tokens=5)
        assert "chat model and not supported in the v1/completions endpoint" in str(err.value)
        ok = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert ok.choices[0].message.content
        assert srv.paths == {"/v1/completions": 1, "/v1/chat/completions": 1}


def test_logprobs_omitted_or_refused():
    msgs = [{"role": "user", "content": "Is water wet?"}]
    with LoopbackServer(hosted=HostedAPI(logprobs="omit")) as srv:
        r = _client(srv).chat.completions.create(model="t", messages=msgs, logprobs=True, top_logprobs=5, max_tokens=3)
        assert r.choices[0].logprobs is None and r.choices[0].message.content
    with LoopbackServer(hosted=HostedAPI(logprobs="refuse")) as srv:
        with pytest.raises(openai.BadRequestError, match="logprobs is not supported"):
            _client(srv).chat.completions.create(model="t", messages=msgs, logprobs=True, top_logprobs=5, max_tokens=3)
    with LoopbackServer() as srv:  # the default still returns them
        r = _client(srv).chat.completions.create(model="t", messages=msgs, logprobs=True, top_logprobs=2, max_tokens=3)
        assert len(r.choices[0].logprobs.content) == 3


def test_inline_think_spends_the_token_budget():
    msgs = [{"role": "user", "content": "Name a colour."}]
    with LoopbackServer(hosted=HostedAPI(think="inline", think_words=40)) as srv:
        c = _client(srv)
        short = c.chat.completions.create(model="t", messages=msgs, max_tokens=10)
        assert short.choices[0].finish_reason == "length"
        assert short.choices[0].message.content.startswith("<think>") and "</think>" not in short.choices[0].message.content
        full = c.chat.completions.create(model="t", messages=msgs, max_tokens=200)
        text = full.choices[0].message.content
        assert full.choices[0].finish_reason == "stop" and text.index("</think>") > text.index("<think>") == 0
        assert len(text.split("</think>", 1)[1].split()) >= 30  # the answer comes after the thinking


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_field_spends_the_budget(field):
    msgs = [{"role": "user", "content": "Name a colour."}]
    with LoopbackServer(hosted=HostedAPI(think=field, think_words=30)) as srv:
        c = _client(srv)
        raw = c.chat.completions.with_raw_response.create(model="t", messages=msgs, max_tokens=20).http_response.json()
        msg = raw["choices"][0]["message"]
        assert msg["content"] == "" and len(msg[field].split()) == 20 and raw["choices"][0]["finish_reason"] == "length"
        raw = c.chat.completions.with_raw_response.create(model="t", messages=msgs, max_tokens=200).http_response.json()
        msg = raw["choices"][0]["message"]
        assert msg[field].startswith("Okay, let me think.") and "<think>" not in msg["content"] and msg["content"]
        assert raw["usage"]["completion_tokens"] == len(msg[field].split()) + len(msg["content"].split())


@pytest.mark.parametrize("headers,wait", [(("Retry-After",), 0.6), (("retry-after-ms",), 0.6)])
def test_429_retry_after_headers_are_honoured(headers, wait):
    calls = []

    def once_limited(body):
        calls.append(time.perf_counter())
        return Fault("429", retry_after=wait, retry_headers=headers) if len(calls) == 1 else "fine"

    with LoopbackServer(once_limited) as srv:
        r = _client(srv).with_options(max_retries=0)
        with pytest.raises(openai.RateLimitError) as err:
            r.chat.completions.create(model="t", messages=[{"role": "user", "content": "x"}])
        assert set(err.value.response.headers) >= {h.lower() for h in headers}
        assert not ({"retry-after", "retry-after-ms"} - {h.lower() for h in headers}) & set(err.value.response.headers)
        calls.clear()
        llm = _llm(srv, retry_base_delay=0.001)
        comp = run_sync(llm.chat([{"role": "user", "content": "x"}], GenParams(max_tokens=5)))
    assert comp.text == "fine" and llm.usage.retries == 1
    assert calls[1] - calls[0] >= wait * 0.95  # only the header explains the wait (base delay is 1 ms)


def test_json_schema_strict_mode_is_checked_like_openai():
    loose = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]}
    assert "additionalProperties" in strict_schema_error(loose)
    assert "Missing 'b'" in strict_schema_error({**loose, "additionalProperties": False})
    closed = {**loose, "required": ["a", "b"], "additionalProperties": False}
    assert strict_schema_error(closed) is None
    msgs = [{"role": "user", "content": "json please"}]
    with LoopbackServer() as srv:
        c = _client(srv)
        with pytest.raises(openai.BadRequestError, match="additionalProperties"):
            c.chat.completions.create(model="t", messages=msgs, response_format={
                "type": "json_schema", "json_schema": {"name": "out", "schema": loose, "strict": True}})
        with pytest.raises(openai.BadRequestError, match="json_schema.name"):
            c.chat.completions.create(model="t", messages=msgs, response_format={
                "type": "json_schema", "json_schema": {"schema": closed}})
        ok = c.chat.completions.create(model="t", messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "out", "schema": closed, "strict": True}})
        value = json.loads(ok.choices[0].message.content)
        assert set(value) == {"a", "b"} and isinstance(value["b"], int)


# ------------------------------------------------------------------ what the client does about them

def test_strict_variant_closes_objects_and_refuses_optional_properties():
    from dataforge.quality.judges import Verdict

    strict = strict_variant(Verdict.model_json_schema())
    assert strict["additionalProperties"] is False and strict_schema_error(strict) is None
    assert strict_variant({"type": "object", "properties": {"x": {"type": "string", "default": ""}}}) is None


def test_structured_output_goes_strict_and_passes_the_strict_server():
    from dataforge.quality.judges import Verdict

    with LoopbackServer() as srv:
        res = run_sync(generate_structured(_llm(srv, model="gpt-4o"), [{"role": "user", "content": "judge"}], Verdict))
        sent = srv.requests[0]["response_format"]["json_schema"]
    assert res.ok and res.value.verdict in ("yes", "no")
    assert sent["strict"] is True and sent["schema"]["additionalProperties"] is False


@pytest.mark.parametrize("text,answer,reasoning,unfinished", [
    ("<think>\nhmm, 2+2\n</think>\n\n4", "4", "hmm, 2+2", False),
    ("hmm, continued thought</think>The answer is 4.", "The answer is 4.", "hmm, continued thought", False),
    ("<think>still thinking and cut", "", "still thinking and cut", True),
    ("<THINK>a</THINK>x<think>b</think>y", "xy", "a\n\nb", False),
    ("plain answer, nothing to strip ", "plain answer, nothing to strip ", None, False),
])
def test_split_reasoning(text, answer, reasoning, unfinished):
    assert split_reasoning(text) == (answer, reasoning, unfinished)


def test_reasoning_fields_are_split_off():
    assert split_reasoning("42", {"reasoning_content": " because "}) == ("42", "because", False)
    assert split_reasoning("42", {"reasoning": "r"}) == ("42", "r", False)


@pytest.mark.parametrize("hosted,model,profile,why", [
    (HostedAPI(models={"alias": {"meta": {"n_params": 134_515_008}}}), "alias", "fewshot", "/v1/models reports 135M"),
    (HostedAPI(models={"alias": {"meta": {"n_params": 7_241_732_096}}}), "alias", "chat", "/v1/models reports 7.24B"),
    (HostedAPI(models={"alias": {"root": "/models/SmolLM2-360M-Instruct"}}), "alias", "fewshot", "serves '/models/SmolLM2"),
    (HostedAPI(props={"model_path": "/m/qwen2.5-0.5b-instruct-q4.gguf"}), "alias", "fewshot", "/props model_path"),
    (HostedAPI(), "gpt-4o-mini", "chat", "remote server, model size unknown"),
    (HostedAPI(), "Phi-3-mini-4k-instruct", "chat", "remote server"),
    (HostedAPI(), "SmolLM2-135M-Instruct", "fewshot", "small SmolLM2 family (135M)"),
    (HostedAPI(), "Qwen2.5-0.5B-Instruct", "fewshot", "says 500M parameters"),
])
def test_profile_follows_what_the_server_says(hosted, model, profile, why):
    with LoopbackServer(models=(model,), hosted=hosted) as srv:
        llm = _llm(srv, model=model)
        d = llm.profile_decision
        assert (d.profile, llm.describe()["profile_reason"]) == (profile, d.reason) and why in d.reason
        assert _llm(srv, model=model, profile="chat" if profile == "fewshot" else "fewshot").profile_decision.reason == "--profile"


def test_refused_completions_switch_to_chat_once(caplog):
    """A few-shot model behind a chat-only API: one request finds out, one warning, then chat for good."""
    with LoopbackServer(models=("smollm2-135m",), hosted=HostedAPI(chat_only=True)) as srv:
        llm = _llm(srv, model="smollm2-135m")
        assert llm.profile == "fewshot"
        prompts = [render("judge_alignment", "fewshot", instruction=f"Task {i}", input="", response="ok") for i in range(8)]
        with caplog.at_level(logging.WARNING, logger="dataforge.llm"):
            comps = run_sync(llm.generate_many(prompts, GenParams(max_tokens=4)))
            later = run_sync(llm.generate(prompts[0], GenParams(max_tokens=4)))
        assert all(c.text for c in comps) and {c.profile for c in comps} == {"chat"} and later.profile == "chat"
        assert srv.paths["/v1/completions"] == 1 and srv.paths["/v1/chat/completions"] == 9
        assert all("messages" in b for b in srv.requests[1:])  # the chat version of the template went
        assert sum("switching to chat" in r.getMessage() for r in caplog.records) == 1
        assert llm.profile == "chat" and "refuses /completions" in llm.profile_decision.reason


def test_long_think_does_not_truncate_the_answer():
    """The first answer ends inside the thinking: asked again with the reasoning allowance on top of the
    answer's budget; later requests carry the allowance from the start."""
    with LoopbackServer(hosted=HostedAPI(think="reasoning_content", think_words=50)) as srv:
        llm = _llm(srv, model="deepseek-reasoner", reasoning_tokens=100)
        comp = run_sync(llm.chat([{"role": "user", "content": "q"}], GenParams(max_tokens=30)))
        assert not comp.truncated and len(comp.text.split()) >= 30 and comp.choices[0].reasoning.startswith("Okay")
        run_sync(llm.chat([{"role": "user", "content": "q2"}], GenParams(max_tokens=30)))
        assert [b["max_tokens"] for b in srv.requests] == [30, 130, 130]


def test_judge_without_logprobs_gives_a_generated_verdict_or_none():
    from dataforge.quality.judges import Judge
    from dataforge.records import Record

    rec = Record(instruction="Name a primary colour.", output="Red.")
    with LoopbackServer(hosted=HostedAPI(logprobs="omit")) as srv:
        judge = Judge(_llm(srv, model="gpt-4o"))
        j = run_sync(judge.alignment(rec))
        assert j.how == "verdict" and j.score in (0.0, 1.0) and j.reason and judge.verdicts == 1
        run_sync(judge.contradiction(rec))  # known now: no second logprob attempt
        assert sum("logprobs" in b for b in srv.requests) == 1
    with LoopbackServer(lambda body: "I'd rather not say.", hosted=HostedAPI(logprobs="omit")) as srv:
        judge = Judge(_llm(srv, model="gpt-4o"))
        j = run_sync(judge.alignment(rec))
        assert j.score is None and j.how == "none" and judge.unreadable == 1
    with LoopbackServer(hosted=HostedAPI(think="inline")) as srv:  # logprobs there, but of the thinking
        j = run_sync(Judge(_llm(srv, model="qwen3-8b")).alignment(rec))
        assert j.how == "verdict"


def test_local_and_in_process_evidence(tmp_path):
    from dataforge.llm.profile import from_hf_config

    local = make_llm(BackendConfig(backend="local", no_cache=True))  # the embedded GGUF: its header says 135M
    assert local.profile_decision.as_dict() == {"profile": "fewshot",
                                                "reason": "the GGUF's general.size_label '135M' reports 135M parameters"}
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152}))
    # 49152*576 + 12*30*576**2 = 147,750,912
    assert from_hf_config(str(folder)).as_dict() == {"profile": "fewshot",
                                                     "reason": "config.json of 'my-model' reports 148M parameters"}
    (folder / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 4096, "num_hidden_layers": 32,
                                                                    "vocab_size": 128256}}))
    assert from_hf_config(str(folder)).profile == "chat"
    assert from_hf_config(str(tmp_path / "missing")) is None
