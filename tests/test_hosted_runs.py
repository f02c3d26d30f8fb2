"""Whole commands against a loopback server that behaves like the hosted APIs users bring: a chat-only
model named like a small one, a reasoning model, a server without log-probabilities."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records
from dataforge.testing.hosted import HostedAPI
from dataforge.testing.loopback import LoopbackServer

from conftest import EXAMPLES

runner = CliRunner()


def _seeds(tmp_path, n: int = 8):
    """The first n quickstart seeds: enough to show every request's route, and quick on 2 cores."""
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join((EXAMPLES / "seeds.jsonl").read_text().splitlines(keepends=True)[:n]))
    return str(path)


def _summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-2.5-flash", "Phi-3-mini-4k-instruct"])
def test_evolve_with_a_hosted_chat_model_sends_nothing_to_completions(tmp_path, model):
    out = tmp_path / "evo.jsonl"
    with LoopbackServer(models=(model,), hosted=HostedAPI(chat_only=True)) as srv:
        s = _summary(runner.invoke(app, ["evolve", _seeds(tmp_path), "-o", str(out), "--rounds", "1",
                                         "--model", model, "--base-url", srv.base_url, "--no-cache", "--json"]))
        paths = dict(srv.paths)
    assert paths.get("/v1/completions", 0) == 0 and paths["/v1/chat/completions"] >= 16
    assert sum(s["out"].values()) == len(list(read_records(out))) >= 6
    assert s["profile"] == "chat" and s["profile_reason"] == "remote server, model size unknown"


def test_evolve_with_a_small_name_on_a_chat_only_server_switches_once(tmp_path):
    out = tmp_path / "evo.jsonl"
    with LoopbackServer(models=("smollm2-135m",), hosted=HostedAPI(chat_only=True)) as srv:
        s = _summary(runner.invoke(app, ["evolve", _seeds(tmp_path), "-o", str(out), "--rounds", "1",
                                         "--model", "smollm2-135m", "--base-url", srv.base_url, "--no-cache", "--json"]))
        paths = dict(srv.paths)
    assert paths["/v1/completions"] == 1  # one request found out; everything else went to chat
    assert sum(s["out"].values()) >= 6 and s["profile"] == "chat" and "refuses /completions" in s["profile_reason"]


@pytest.mark.parametrize("think", ["inline", "reasoning_content", "reasoning"])
def test_no_think_text_in_any_record(tmp_path, think):
    out = tmp_path / "evo.jsonl"
    with LoopbackServer(models=("deepseek-r1",), hosted=HostedAPI(think=think, think_words=40)) as srv:
        s = _summary(runner.invoke(app, ["evolve", _seeds(tmp_path), "-o", str(out), "--rounds", "1",
                                         "--model", "deepseek-r1", "--base-url", srv.base_url, "--no-cache", "--json",
                                         "--keep-reasoning"]))
    text = out.read_text()
    recs = list(read_records(out))
    assert sum(s["out"].values()) == len(recs) >= 6
    for r in recs:  # the thinking is nowhere in the data ...
        assert "think>" not in r.instruction + r.input + r.output and "let me think" not in r.output
    # ... and kept, on request, in the lineage only
    assert all(r.lineage.history[-1]["kind"] == "reasoning" and "let me think" in r.lineage.history[-1]["text"]
               for r in recs)
    assert text.count("Okay, let me think") == len(recs)


def _reviewer(body: dict) -> str:
    """A judge that reads the record: 'banana' is no metal; nothing contradicts; everything is simple."""
    from dataforge.testing.loopback import last_user_message

    text = last_user_message(body)
    if "complex" in text:
        return json.dumps({"score": 3})
    if "contradict" in text:
        return json.dumps({"verdict": "no", "reason": "Consistent."})
    wrong = "banana" in text.split("### Response", 1)[-1]
    return json.dumps({"verdict": "no" if wrong else "yes", "reason": "A banana is a fruit, not a metal." if wrong
                       else "It gives a fitting example."})


def test_filter_without_logprobs_accepts_nothing_unjudged(tmp_path):
    """No log-probabilities: every accepted record carries a generated alignment verdict; a server whose
    verdicts cannot be read leaves every record unjudged, and none is accepted."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Give one example of a {w}.", "output": f"A {w}: {x}."}) + "\n"
                           for w, x in [("fruit", "apple"), ("colour", "red"), ("planet", "Mars"), ("metal", "banana"),
                                        ("bird", "robin"), ("tree", "oak")]))
    out = tmp_path / "clean.jsonl"
    base = ["filter", str(src), "-o", str(out), "--judges", "on", "--refine-rounds", "0", "--no-cache", "--no-dedup",
            "--model", "gpt-4o"]
    with LoopbackServer(_reviewer, models=("gpt-4o",), hosted=HostedAPI(logprobs="omit")) as srv:
        res = runner.invoke(app, [*base, "--base-url", srv.base_url])
        assert res.exit_code == 0, res.output
        assert any("response_format" in b for b in srv.requests)  # the verdict went through structured output
    accepted = list(read_records(out))
    (review,) = read_records(f"{out}.review.jsonl")
    assert len(accepted) == 5 and all(r.scores["alignment"] == 1.0 for r in accepted)
    assert review.output == "A metal: banana." and "alignment:A banana is a fruit, not a metal." in review.reasons

    with LoopbackServer(lambda body: "Hard to say.", models=("gpt-4o",), hosted=HostedAPI(logprobs="omit")) as srv:
        res = runner.invoke(app, [*base, "--base-url", srv.base_url])
        assert res.exit_code == 0, res.output
    assert out.stat().st_size == 0  # nothing accepted
    review = list(read_records(f"{out}.review.jsonl"))
    assert len(review) == 6 and all("alignment:unjudged" in r.reasons for r in review)


def test_a_run_where_every_request_fails_exits_non_zero_with_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    from dataforge.testing.loopback import Fault

    out = tmp_path / "evo.jsonl"
    with LoopbackServer(lambda body: Fault("500"), models=("gpt-4o",)) as srv:
        proc = subprocess.run([sys.executable, "-m", "dataforge", "evolve", _seeds(tmp_path, 3), "-o", str(out),
                               "--rounds", "1", "--model", "gpt-4o", "--base-url", srv.base_url, "--no-cache",
                               "--max-retries", "0"], capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "requests failed" in ln]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: evolve: 3 of 3 model requests failed and nothing was produced")
    assert "InternalServerError 500" in lines[0]  # the cause, named
