"""Self-Refine end to end on the loopback OpenAI-compatible server (real HTTP): a scripted model judges,
critiques and rewrites; the refined response must replace the draft and the history must be kept."""

from __future__ import annotations

import json
import re

import pytest

from dataforge.io import read_records, write_records
from dataforge.llm import BackendConfig, make_llm
from dataforge.quality.gate import FilterConfig, run_filter
from dataforge.records import Record
from dataforge.stage import RequestsFailed
from dataforge.testing.loopback import Fault, LoopbackServer, last_user_message

COLOURS_Q = "Name the three primary colours of light. Answer in at most 10 words."
BAD_DRAFT = ("Light travels at about 300,000 kilometres per second in a vacuum, which is faster than anything "
             "else we know of in the universe.")
FIXED = "Red, green and blue."
GOLD_Q = "Give the chemical symbol for gold and say what it comes from."
GOLD_A = "The chemical symbol for gold is Au, from the Latin word aurum."


def scripted(body: dict) -> str:
    """A rule-based stand-in for a capable model, deciding by what the prompt asks."""
    text = last_user_message(body)
    response = text.split("### Response", 1)[-1] if "### Response" in text else ""
    if "Problems found by the gate" in text:
        return "- It talks about the speed of light instead of naming the colours.\n- It is longer than 10 words."
    if "Rewrite the response" in text:
        return FIXED
    if "carry out the instruction" in text:
        return "yes" if re.search(r"\b(red|au)\b", response, re.I) else "no"
    if "contradict" in text:
        return "no"
    if "Rate how complex" in text:
        return json.dumps({"score": 3})
    return "unexpected prompt"


def _input(tmp_path):
    path = tmp_path / "in.jsonl"
    write_records(path, [Record(instruction=COLOURS_Q, output=BAD_DRAFT), Record(instruction=GOLD_Q, output=GOLD_A)])
    return path


def test_refined_response_replaces_draft_and_history_is_kept(tmp_path):
    src = _input(tmp_path)
    out = tmp_path / "clean.jsonl"
    with LoopbackServer(scripted) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True))
        summary = run_filter(src, out, FilterConfig(judges="on", refine_rounds=2, dedup=False, no_reference=True),
                             llm=llm, progress=False)
        prompts = [last_user_message(b) for b in srv.requests]
    assert summary.out == {"accepted": 2}
    assert summary.details["refine"]["attempted"] == 1 and summary.details["refine"]["fixed"] == 1
    assert summary.details["judges"] == "model"
    recs = {r.instruction: r for r in read_records(out)}
    fixed = recs[COLOURS_Q]
    assert fixed.output == FIXED                       # the draft was replaced
    kinds = [h["kind"] for h in fixed.lineage.history]
    assert kinds == ["draft", "critique", "final"]
    assert fixed.lineage.history[0]["output"] == BAD_DRAFT
    assert any(p.startswith("format") for p in fixed.lineage.history[0]["problems"])
    assert "speed of light" in fixed.lineage.history[1]["text"]
    assert fixed.lineage.history[1]["template"] == "critique.chat" and fixed.lineage.history[1]["template_hash"]
    assert fixed.scores["alignment"] == 1.0 and fixed.scores["format"] == 1.0
    assert fixed.meta["refine_rounds"] == 1
    untouched = recs[GOLD_Q]
    assert untouched.output == GOLD_A and untouched.lineage.history == []
    # the refiner was told what failed, and asked to rewrite from the critique
    assert any("Problems found by the gate" in p and "word_count" in p for p in prompts)
    assert any("Rewrite the response" in p and "speed of light" in p for p in prompts)


def test_unfixable_record_goes_to_review_after_all_rounds(tmp_path):
    def stubborn(body: dict) -> str:
        text = last_user_message(body)
        if "Rewrite the response" in text:
            return BAD_DRAFT  # the model keeps writing the same wrong answer
        return scripted(body)

    src = _input(tmp_path)
    out = tmp_path / "clean.jsonl"
    with LoopbackServer(stubborn) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True))
        summary = run_filter(src, out, FilterConfig(judges="on", refine_rounds=2, dedup=False, no_reference=True),
                             llm=llm, progress=False)
    assert summary.out == {"accepted": 1, "review": 1}
    (rev,) = read_records(f"{out}.review.jsonl")
    assert [h["kind"] for h in rev.lineage.history] == ["draft", "critique", "draft", "critique", "final"]
    assert any(x.startswith("alignment") for x in rev.reasons) and any(x.startswith("format") for x in rev.reasons)


def test_failing_model_does_not_lose_records(tmp_path):
    src = _input(tmp_path)
    out = tmp_path / "clean.jsonl"
    with LoopbackServer(lambda body: Fault("500")) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True,
                                     max_retries=0))
        # every request failed and nothing was accepted: the run is refused (exit 2) ...
        with pytest.raises(RequestsFailed, match="model requests failed and nothing was produced"):
            run_filter(src, out, FilterConfig(judges="on", refine_rounds=1, dedup=False, no_reference=True),
                       llm=llm, progress=False)
    recs = {r.output == BAD_DRAFT: r for r in read_records(f"{out}.review.jsonl")}  # ... and nothing is lost
    # the format check needs no model: the over-long draft is still caught
    assert any(x.startswith("format") for x in recs[True].reasons)
    for r in recs.values():
        assert "alignment:unjudged" in r.reasons and "contradiction:unjudged" in r.reasons
