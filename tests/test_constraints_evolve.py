"""Constraint-aware evolution draws from the whole registry, the new IFEval kinds included, and every
attached spec can be checked against the instruction it was attached to."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from evolve_script import SEEDS, responder  # noqa: E402

from dataforge.constraints import check, make_spec, still_worded
from dataforge.generate.evolve import EvolveConfig, run_evolve
from dataforge.io import read_records
from dataforge.llm import BackendConfig
from dataforge.quality.constraint_parser import parse_constraints
from dataforge.quality.constraint_scoring import spec_key
from dataforge.testing.loopback import LoopbackServer

NEW_KINDS = {"letter_frequency", "capital_word_frequency", "paragraph_dividers", "first_word", "repeat_prompt",
             "two_responses", "answer_choice", "response_language", "char_count"}


def test_add_constraints_uses_the_new_types(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS * 1))
    out = tmp_path / "evolved.jsonl"
    with LoopbackServer(responder) as srv:
        cfg = EvolveConfig(rounds=6, ops=["add_constraints"], verifiable_share=1.0, seed=3)
        run_evolve(seeds, out, cfg, backend=BackendConfig(backend="openai", base_url=srv.base_url, model="test",
                                                          no_cache=True), progress=False)
    recs = [r for r in read_records(out) if r.meta.get("constraints")]
    types = {s["type"] for r in recs for s in r.meta["constraints"]}
    assert types & NEW_KINDS, types
    for r in recs:
        for s in r.meta["constraints"]:
            assert still_worded(s, r.instruction)
        # the parser reads back the constraints the evolver wrote (its phrasings are among the labelled ones)
        if len(r.meta["constraints"]) == 1 and r.meta["constraints"][0]["type"] in NEW_KINDS - {"repeat_prompt"}:
            assert spec_key(r.meta["constraints"][0]) in {spec_key(s) for s in parse_constraints(r.instruction)}, \
                r.instruction


def test_repeat_prompt_survives_append_and_is_checkable():
    from dataforge.generate.evolve import append_phrase

    spec = make_spec("repeat_prompt", request="List three rivers:", form=1)
    child = append_phrase("List three rivers:", spec["phrase"])
    assert still_worded(spec, child)
    assert check(spec, "List three rivers. The Nile, the Amazon and the Rhine.").ok
    reworded = "Name three long rivers. " + spec["phrase"]
    assert not still_worded(spec, reworded)  # a model rewrite changed the request: the spec is dropped
