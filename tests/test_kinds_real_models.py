"""Magpie, converse and preference pairs on real model software: the embedded SmolLM2-135M (llama.cpp in process) and
llama.cpp's OpenAI-compatible server serving the same GGUF (the `models` tests' fixture). Small runs: a
couple of records with short answers, so the shared machine is not held long."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records
from dataforge.llm.config import default_local_model

from test_llama_server import ALIAS, llama_server  # noqa: F401  (the module-scoped server fixture)

pytestmark = pytest.mark.slow
runner = CliRunner()
SMOLLM_PREFIX = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                 "<|im_start|>user\n")


def _magpie(out, *backend):
    res = runner.invoke(app, ["magpie", "-n", "2", "-o", str(out), "--json", "--batch", "4",
                              "--answer-max-tokens", "48", "--threads", "1", *backend])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _check(summary, out):
    d = summary["details"]
    recs = list(read_records(out))
    assert d["pre_query"] == SMOLLM_PREFIX and d["made"] == len(recs) == 2
    assert summary["out"] == {"pending": 2} and summary["tokens"]["failed"] == 0
    assert all(r.instruction.strip() and r.output.strip() and "<|im_" not in r.instruction for r in recs)
    assert d["queries_kept"] == 2 and d["requests"] % 4 == 0  # whole batches of 4
    return recs


def test_magpie_on_the_embedded_model(tmp_path):
    out = tmp_path / "pool.jsonl"
    recs = _check(_magpie(out, "--cache", str(tmp_path / "c.sqlite")), out)
    assert all(r.lineage.model.startswith("local:") for r in recs)


def test_magpie_against_the_llama_cpp_server(llama_server, tmp_path):  # noqa: F811
    out = tmp_path / "pool.jsonl"
    summary = _magpie(out, "--base-url", llama_server, "--model", ALIAS, "--chat-template",
                      str(default_local_model()), "--cache", str(tmp_path / "c.sqlite"), "--timeout", "120")
    recs = _check(summary, out)
    assert all(r.lineage.model == f"openai:{ALIAS}" for r in recs)
    assert summary["details"]["chat_template"] == f"gguf:{default_local_model().name}"


def test_converse_and_pairs_on_the_embedded_model(tmp_path):
    """One seed to a 2-answer conversation and one constrained instruction to 2 sampled answers, on the real
    135M model: every request succeeds, the turns are typed, each input ends up written or rejected with a
    reason (a 135M model may botch a follow-up twice or give two equally poor answers: said, not hidden)."""
    from dataforge import constraints as C
    from dataforge.io import write_records
    from dataforge.records import Record

    seed = tmp_path / "seed.jsonl"
    write_records(seed, [Record(instruction="Give three tips for keeping houseplants alive.",
                                output="Water them when the soil is dry, give them bright indirect light, and use "
                                       "pots with drainage holes.")])
    out = tmp_path / "dialogue.jsonl"
    res = runner.invoke(app, ["converse", str(seed), "-o", str(out), "--turns", "2", "--styles", "deeper",
                              "--follow-up-max-tokens", "40", "--answer-max-tokens", "48", "--threads", "1",
                              "--json", "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["tokens"]["failed"] == 0 and summary["tokens"]["requests"] >= 2
    kept = list(read_records(out))
    side = tmp_path / "dialogue.jsonl.rejected.jsonl"
    rejected = list(read_records(side)) if side.exists() and side.stat().st_size else []
    assert len(kept) + len(rejected) == 1
    for r in kept:
        assert [t.role for t in r.turns] == ["user", "assistant"] and r.turns[0].style == "deeper"
        assert r.turns[1].content.strip() and r.lineage.model.startswith("local:")
    assert all(r.reasons[0].startswith("converse:") for r in rejected)

    # a bundled seed task with a library constraint attached (as evolve's add_constraints does); with this
    # seed one answer is a short title and the other a 30-odd-word email: a verifiable pair
    spec = C.make_spec("word_count", relation="at_most", n=25)
    src = tmp_path / "constrained.jsonl"
    write_records(src, [Record(instruction=f"Generate an appropriate subjective title for the following email: "
                                           f"{spec['phrase']}",
                               input="Hi [person name],\n\nI'm writing to ask you if you are happy to be a panelist "
                                     "of our workshop on multimodality at CVPR. The workshop will be held on June 20, "
                                     "2023. \n\nBest,\n[my name]",
                               meta={"constraints": [spec]})])
    pairs = tmp_path / "pairs.jsonl"
    res = runner.invoke(app, ["pairs", str(src), "-o", str(pairs), "--temperatures", "0.2,1.4", "--threads", "1",
                              "--answer-max-tokens", "48", "--judges", "off", "--json", "--to", "record",
                              "--no-include-output", "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)["details"]
    assert d["answers_sampled"] == 2 and d["pairs"] == {"verifiable": 1} and d["scored_by"] == "embedding and heuristics"
    (pair,) = read_records(pairs)
    assert C.all_ok([spec], pair.output) and not C.all_ok([spec], pair.preference.rejected)
    assert {pair.preference.chosen_temperature, pair.preference.rejected_temperature} == {0.2, 1.4}
