"""`dataforge magpie`: queries from the chat template's pre-query prefix through /v1/completions, filtered and
counted by reason, answered as chat turns; the template found where the model comes from (GGUF, a model
folder, llama.cpp's /props, a server-reported path) or refused; chat-only servers refused; topics and
--steer steer the system prompt; shards split the requests; a killed run resumes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.errors import DataforgeError
from dataforge.generate.evolve_step import derive_seed
from dataforge.generate.magpie_template import ChatTemplate, find_template, load_template, pre_query
from dataforge.io import read_records
from dataforge.llm.config import default_local_model
from dataforge.testing import LoopbackServer
from dataforge.testing.hosted import HostedAPI

runner = CliRunner()
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
          "m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PREFIX = "<|im_start|>user\n"
# what the "model" writes after the pre-query prefix, request by request (cycled)
QUERIES = ["How do I keep basil alive on a windowsill?", "Can you tell me about the",  # a fragment
           "Sure! Here is a recipe for you.",  # the model answered instead of asking
           "The weather is lovely today.",  # asks for nothing
           "How do I keep basil alive on a windowsill?",  # a repeat
           "Write a short poem about autumn rain in the city.", "Explain how vaccines train the immune system.",
           "What is the difference between a list and a tuple in Python?"]


REQUEST_OF_SEED = {derive_seed(0, "query", g): g for g in range(200)}  # request g carries its own seed


def _responder(seen: list[str]):
    def reply(body: dict) -> str:
        if "prompt" in body:  # a query request: a raw completion after the prefix
            seen.append(body["prompt"])
            return QUERIES[REQUEST_OF_SEED[body["seed"]] % len(QUERIES)] + "<|im_end|>\nleaked assistant text"
        return "An answer: " + body["messages"][-1]["content"][:40]
    return reply


@pytest.fixture
def chatml(tmp_path):
    path = tmp_path / "chatml.jinja"
    path.write_text(CHATML)
    return path


def _run(srv, out, *extra):
    return runner.invoke(app, ["magpie", "-o", str(out), "--json", "--base-url", srv.base_url, "--model", "m",
                               "--no-cache", "--batch", "8", *extra])


def test_queries_from_the_pre_query_prefix_filtered_by_reason_and_answered(tmp_path, chatml):
    seen: list[str] = []
    out = tmp_path / "pool.jsonl"
    with LoopbackServer(responder=_responder(seen)) as srv:
        res = _run(srv, out, "-n", "4", "--chat-template", str(chatml), "--keep-rejected")
        bodies = list(srv.requests)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)["details"]
    query_bodies = [b for b in bodies if "prompt" in b]
    assert all(b["prompt"] == PREFIX and "<|im_end|>" in b["stop"] for b in query_bodies)
    assert d["pre_query"] == PREFIX and d["made"] == 4 and d["requests"] == 8
    assert d["queries_dropped"] == {"fragment:dangling_word": 1, "assistant_voice": 1, "not_a_request": 1,
                                    "too_similar": 1} and d["fragments"] == 1
    recs = list(read_records(out))
    kept = [r for r in recs if r.status == "pending"]
    assert [r.instruction for r in kept] == [QUERIES[0], *QUERIES[5:8]]  # cut at the end of the user turn
    assert all(r.output == ("An answer: " + r.instruction[:40]).strip() and r.lineage.generator == "magpie" for r in kept)
    assert all(r.lineage.template == "chat_template:file:chatml.jinja" for r in kept)
    answered = sorted(b["messages"][0]["content"] for b in bodies if "messages" in b)
    assert all(len(b["messages"]) == 1 for b in bodies if "messages" in b)  # a normal chat turn, no system
    assert answered == sorted(r.instruction for r in kept)
    assert sorted(r.reasons[0] for r in recs if r.status == "rejected") == [
        "magpie:assistant_voice", "magpie:fragment:dangling_word", "magpie:not_a_request", "magpie:too_similar"]


def test_topics_and_steer_go_into_the_system_prompt_of_the_template(tmp_path, chatml):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"format": "dataforge.curate.stats/1", "thin_topics": ["t7"],
                                 "topics": {"t7": {"name": "sourdough, starter, bread"}}}))
    seen: list[str] = []
    with LoopbackServer(responder=_responder(seen)) as srv:
        res = _run(srv, tmp_path / "o.jsonl", "-n", "2", "--chat-template", str(chatml), "--topics", "gardening",
                   "--steer", str(stats), "--system", "You are a patient tutor.")
    assert res.exit_code == 0, res.output
    systems = {p.split("<|im_end|>")[0] for p in seen}
    assert systems == {"<|im_start|>system\nYou are a patient tutor. The user will ask you a question or give you "
                       "a task about gardening.",
                       "<|im_start|>system\nYou are a patient tutor. The user will ask you a question or give you "
                       "a task about sourdough, starter, bread."}
    recs = [r for r in read_records(tmp_path / "o.jsonl")]
    assert {r.topic for r in recs} <= {"gardening", "t7"} and all(r.meta["magpie"]["system"] for r in recs)


def test_chat_only_servers_and_unknown_templates_are_refused_clearly(tmp_path, chatml):
    with LoopbackServer(responder=_responder([]), hosted=HostedAPI(chat_only=True)) as srv:
        res = _run(srv, tmp_path / "o.jsonl", "-n", "2", "--chat-template", str(chatml))
        assert srv.paths["/v1/chat/completions"] == 0
    assert isinstance(res.exception, DataforgeError) and "magpie needs raw completions" in str(res.exception)
    assert "hosted chat APIs do not" in str(res.exception) and not (tmp_path / "o.jsonl").exists()
    with LoopbackServer(responder=_responder([])) as srv:
        res = _run(srv, tmp_path / "o.jsonl", "-n", "2")
    assert "pass --chat-template" in str(res.exception) and "does not report one" in str(res.exception)


def test_the_template_comes_from_where_the_model_comes_from(tmp_path):
    gguf = load_template(str(default_local_model()))
    pq = pre_query(gguf, None)
    assert pq.prefix == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                         "Face<|im_end|>\n<|im_start|>user\n")  # its own default system prompt, kept exactly
    assert pq.stops[0] == "<|im_end|>" and gguf.adds_bos is False
    folder = tmp_path / "llama3"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA3, "add_bos_token": True,
                                                              "bos_token": "<|begin_of_text|>",
                                                              "eos_token": {"content": "<|eot_id|>"}}))
    llama3 = pre_query(load_template(str(folder)), "Be brief.")
    assert llama3.prefix == ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                             "<|start_header_id|>user<|end_header_id|>\n\n")  # the endpoint adds the BOS
    assert llama3.stops == ("<|eot_id|>", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    no_system = ChatTemplate("x", "{% for m in messages if m['role'] != 'system' %}[{{ m['content'] }}]{% endfor %}")
    with pytest.raises(DataforgeError, match="drops the system prompt"):
        pre_query(no_system, "Be brief.")
    # servers: llama.cpp's /props, else a listed model whose root is a local folder (vLLM serving a path)
    from dataforge.llm import BackendConfig, make_backend

    with LoopbackServer(hosted=HostedAPI(props={"chat_template": CHATML})) as srv:
        t = find_template(make_backend(BackendConfig(base_url=srv.base_url, model="m")), None)
    assert t.source.endswith("/props") and t.text == CHATML
    with LoopbackServer(models=("m",), hosted=HostedAPI(models={"m": {"root": str(folder)}})) as srv:
        t = find_template(make_backend(BackendConfig(base_url=srv.base_url, model="m")), None)
    assert t.source == "folder:llama3" and t.text == LLAMA3


def test_shards_split_the_requests_and_the_input_seeds_the_novelty_filter(tmp_path, chatml):
    seen: list[str] = []
    prior = tmp_path / "prior.jsonl"
    prior.write_text(json.dumps({"instruction": "Write a short poem about autumn rain in the city."}) + "\n")
    outs = []
    with LoopbackServer(responder=_responder(seen)) as srv:
        for i in (1, 2):
            out = tmp_path / f"s{i}.jsonl"
            res = runner.invoke(app, ["magpie", str(prior), "-o", str(out), "--json", "--base-url", srv.base_url,
                                      "--model", "m", "--no-cache", "--batch", "8", "-n", "5", "--shard", f"{i}/2",
                                      "--chat-template", str(chatml)])
            assert res.exit_code == 0, res.output
            outs.append(json.loads(res.stdout))
    assert [o["details"]["target"] for o in outs] == [3, 2]
    reqs = [[r.meta["magpie"]["request"] for r in read_records(tmp_path / f"s{i}.jsonl")] for i in (1, 2)]
    assert all(g % 2 == 0 for g in reqs[0]) and all(g % 2 == 1 for g in reqs[1])
    texts = [r.instruction for i in (1, 2) for r in read_records(tmp_path / f"s{i}.jsonl")]
    assert QUERIES[5] not in texts  # already in the input: too similar


def test_a_killed_run_resumes_and_ends_like_a_clean_one(tmp_path, chatml):
    from pipeline_helpers import load_jsonl
    from test_kill_resume import _journaled, _kill_when

    slow = LoopbackServer(responder=_responder([]), latency=0.3)
    with slow as srv:
        args = ["magpie", "-o", str(tmp_path / "k.jsonl"), "-n", "6", "--batch", "2", "--base-url", srv.base_url,
                "--model", "m", "--no-cache", "--chat-template", str(chatml), "--max-in-flight", "1"]
        _kill_when(args, _journaled(tmp_path / "k.jsonl", 2))
        before = len(srv.requests)
        res = runner.invoke(app, [*args, "--json"])
        assert res.exit_code == 0, res.output
        resumed_requests = len(srv.requests) - before
        clean = runner.invoke(app, [*args[:2], str(tmp_path / "c.jsonl"), *args[3:]])
        assert clean.exit_code == 0, clean.output
        clean_requests = len(srv.requests) - before - resumed_requests
    assert json.loads(res.stdout)["resumed"] >= 2 and resumed_requests < clean_requests
    assert load_jsonl(tmp_path / "k.jsonl") == load_jsonl(tmp_path / "c.jsonl")
