"""The few-shot templates on the real embedded model (SmolLM2-135M-Instruct via llama.cpp): one tiny
round, so a template change that breaks the small-model path shows up here, not in a user's run."""

from __future__ import annotations

import json

import pytest

from dataforge.generate.evolve import EvolveConfig, run_evolve
from dataforge.io import read_records
from dataforge.llm import BackendConfig, make_llm

SEEDS = [{"id": "s0", "instruction": "Give me tips for staying focused while studying.",
          "instances": [{"input": "", "output": "Put the phone away."}], "is_classification": False},
         {"id": "s1", "instruction": "Explain why the sky is blue.",
          "instances": [{"input": "", "output": "Rayleigh scattering."}], "is_classification": False}]


@pytest.mark.slow
def test_deepen_and_breadth_on_the_embedded_model(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    llm = make_llm(BackendConfig(backend="local", cache_path=str(tmp_path / "cache.sqlite")))
    assert llm.profile == "fewshot"
    cfg = EvolveConfig(rounds=1, ops=["deepen", "breadth"], answer_max_tokens=24, keep_failed=True)
    summary = run_evolve(seeds, tmp_path / "out.jsonl", cfg, llm=llm, progress=False)
    recs = list(read_records(tmp_path / "out.jsonl"))
    assert summary.details["rounds"]["1"]["evolved"] == 2 and len(recs) == 2
    assert summary.details["speculative_discarded"] is None  # one request at a time: speculation stays off
    parents = {r["instruction"] for r in SEEDS}
    for r in recs:
        assert r.lineage.template == f"evol_{r.lineage.operation}.fewshot"
        assert r.lineage.model.startswith("local:SmolLM2")
        if r.status == "pending":  # a survivor is a new one-line instruction with an answer
            assert r.instruction not in parents and "\n" not in r.instruction and r.output
        else:
            assert r.reasons and r.reasons[0] in summary.details["eliminated"]
