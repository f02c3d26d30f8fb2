"""End to end on the real loopback OpenAI-protocol server with a scripted responder
(tests/evolve_script.py): lineage, elimination counts by reason, failed evolutions retried with
another operation, few-shot templates, operation choice and steering."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from evolve_script import SEEDS, responder  # noqa: E402

from dataforge.errors import DataforgeError
from dataforge.generate.elimination import COPIED_PROMPT, NO_INFO_GAIN, SORRY_SHORT, STOPWORDS_ONLY
from dataforge.generate.evolve import (OPERATIONS, Context, EvolveConfig, Slot, choose_operation,
                                       extract_instruction, run_evolve)
from dataforge.io import read_records
from dataforge.stage import SideFiles
from dataforge.llm import BackendConfig
from dataforge.records import Record
from dataforge.testing.loopback import LoopbackServer

# which operation the scripted model makes fail, and by which rule
FAILS_BY = {"concretize": COPIED_PROMPT, "increase_reasoning": NO_INFO_GAIN, "complicate_input": SORRY_SHORT,
            "breadth": STOPWORDS_ONLY}


@pytest.fixture
def seeds(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return p


def _backend(srv):
    return BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True)


def test_end_to_end_lineage_elimination_and_retries(seeds, tmp_path):
    out = tmp_path / "evolved.jsonl"
    with LoopbackServer(responder, latency=0.005) as srv:
        summary = run_evolve(seeds, out, EvolveConfig(rounds=4, keep_failed=True), backend=_backend(srv), progress=False)
        n_requests = len(srv.requests)
    recs = list(read_records(out))
    seed_ids = {r.id for r in read_records(seeds)}
    by_id = {r.id: r for r in recs}

    # every record carries full lineage
    for r in recs:
        L = r.lineage
        assert L.generator == "evolve" and L.operation in OPERATIONS and 1 <= L.round <= 4
        assert len(L.parents) == 1 and L.root in seed_ids and L.model == "openai:test" and L.timestamp
        if L.template == "constraint_library":
            spec = r.meta["constraints"][-1]
            assert spec["phrase"] in r.instruction and r.meta["evol"]["verifiable"] == spec["type"]
        else:
            assert L.template == f"evol_{L.operation}.chat" and len(L.template_hash) == 12
        parent = L.parents[0]
        assert parent in seed_ids or (parent in by_id and by_id[parent].status == "pending")
        if r.status == "pending":
            assert r.output and not r.reasons and r.meta["evol"]["answer_template"] == "answer.chat"
        else:
            assert r.status == "rejected" and r.reasons == [FAILS_BY[L.operation]]

    # elimination counted by reason, all four rules fired, counts match the records
    elim = summary.details["eliminated"]
    assert set(elim) == set(FAILS_BY.values())
    rejected = [r for r in recs if r.status == "rejected"]
    assert sum(elim.values()) == len(rejected) + summary.details["duplicates_dropped"]
    assert summary.details["rounds"]["1"]["evolved"] == len(SEEDS) and len(summary.details["rounds"]) == 4
    assert summary.details["operations"]["deepen"]["survival_rate"] == 1.0
    assert summary.tokens.total > 0 and summary.tokens.requests == n_requests and summary.tokens.failed == 0
    assert summary.out == {"pending": len(recs) - len(rejected), "rejected": len(rejected)}

    # a failed evolution returns its parent to the pool, evolved next round with another operation
    retried = 0
    for f in rejected:
        again = [r for r in recs if r.lineage.parents == f.lineage.parents and r.lineage.round == f.lineage.round + 1]
        for r in again:
            assert r.lineage.operation != f.lineage.operation
            retried += 1
    assert retried >= 3


def test_survivors_only_by_default_and_deterministic(seeds, tmp_path):
    with LoopbackServer(responder) as srv:
        def run(name: str, **kw):
            return run_evolve(seeds, tmp_path / name, EvolveConfig(rounds=2, **kw), backend=_backend(srv), progress=False)

        s1, _, s3 = run("a.jsonl", seed=5), run("b.jsonl", seed=5), run("c.jsonl", seed=6, include_seeds=True)
    a = [r.id for r in read_records(tmp_path / "a.jsonl")]
    assert a == [r.id for r in read_records(tmp_path / "b.jsonl")]
    assert all(r.status == "pending" for r in read_records(tmp_path / "a.jsonl"))
    assert s1.out["pending"] == len(a) == sum(v["survived"] for v in s1.details["rounds"].values())
    assert s3.out["pending"] == len(SEEDS) + sum(v["survived"] for v in s3.details["rounds"].values())
    assert not SideFiles(tmp_path / "a.jsonl").journal.exists()


def test_fewshot_profile_uses_completion_templates(seeds, tmp_path):
    def small_model(body):
        prompt = body.get("prompt")
        if prompt is None:  # answers go through the chat template of the instruct model
            return "A short but real answer about the task at hand."
        last = prompt.rstrip().splitlines()[-1]
        given = prompt.rstrip().splitlines()[-2].removeprefix("Task: ")
        if last.startswith("Rare topic:"):
            if "poem" in given:  # lifts a worked example's topic: a copy of the evolving prompt
                return " the ghazal form\nNew task in the same field: Write a short ghazal about rain."
            return " cave diving\nNew task in the same field: How do cave divers plan their air supply?"
        return f" {given} Give two examples."

    backend = BackendConfig(backend="openai", base_url="", model="test", no_cache=True, profile="fewshot")
    with LoopbackServer(small_model) as srv:
        backend = backend.model_copy(update={"base_url": srv.base_url})
        summary = run_evolve(seeds, tmp_path / "o.jsonl", EvolveConfig(rounds=2, ops=["deepen", "breadth"],
                                                                       weights=[1, 3], elimination={"judge": "off"}),
                             backend=backend, progress=False)
        completions = [b for b in srv.requests if "prompt" in b]
    assert summary.profile == "fewshot" and completions
    assert all(b["stop"] for b in completions)  # the templates' stop sequences are sent
    recs = list(read_records(tmp_path / "o.jsonl"))
    assert recs and all(r.lineage.template in (f"evol_{r.lineage.operation}.fewshot", "constraint_library")
                        for r in recs)
    breadth = [r for r in recs if r.lineage.operation == "breadth"]
    assert breadth and all(r.instruction == "How do cave divers plan their air supply?" for r in breadth)
    assert all(r.meta["evol"]["rare_topic"] == "cave diving" for r in breadth)
    assert summary.details["eliminated"].get("copied_evolving_prompt", 0) >= 1  # the poem seed's ghazal


def test_journal_from_other_settings_is_refused(seeds, tmp_path):
    out = tmp_path / "o.jsonl"
    SideFiles(out).journal.write_text(json.dumps({"header": "something-else"}) + "\n")
    with LoopbackServer(responder) as srv:
        with pytest.raises(DataforgeError, match="other settings"):
            run_evolve(seeds, out, EvolveConfig(rounds=1), backend=_backend(srv), progress=False)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown operation"):
        EvolveConfig(ops=["deepen", "teleport"])
    with pytest.raises(ValueError, match="weights"):
        EvolveConfig(ops=["deepen", "breadth"], weights=[1.0])


def _ctx(cfg, steering=None, levels=()):
    return Context(cfg=cfg, llm=None, eliminator=None, profile="chat", topics=[], steering=steering,
                   level_names=list(levels), evolve_tokens=10, answer_tokens=10)


def test_operation_choice_skips_failed_ops_and_follows_weights():
    cfg = EvolveConfig(ops=["deepen", "breadth", "concretize"], weights=[1, 0, 3])
    slot = Slot(0, Record(instruction="Name a fruit."), failed_ops=["concretize"])
    picks = {choose_operation(_ctx(cfg), slot, random.Random(i)) for i in range(50)}
    assert picks == {"deepen"}  # breadth has weight 0, concretize failed on this parent
    slot.failed_ops = ["deepen", "concretize"]  # everything failed: choose again among all
    assert {choose_operation(_ctx(cfg), slot, random.Random(i)) for i in range(50)} == {"deepen", "concretize"}


def test_steering_leans_in_depth_toward_thin_higher_levels():
    class Steer:
        thin_levels = ["high"]

    cfg = EvolveConfig(ops=["deepen", "breadth"], steer_boost=9.0)
    seed = Record(instruction="Name a fruit.", lineage={"round": 0})
    picks = [choose_operation(_ctx(cfg, Steer(), ("low", "mid", "high")), Slot(0, seed), random.Random(i))
             for i in range(400)]
    assert picks.count("deepen") > 300
    Steer.thin_levels = ["low"]  # a thin level below: breadth is favoured instead
    picks = [choose_operation(_ctx(cfg, Steer(), ("low", "mid", "high")), Slot(0, seed), random.Random(i))
             for i in range(400)]
    assert picks.count("breadth") > 300


def test_extract_instruction():
    assert extract_instruction('  "Name three fruits."  ') == "Name three fruits."
    assert extract_instruction("Name one.\nTask: more", label="Harder task:") == "Name one."
    assert extract_instruction(" x\nNew task in the same field: Do Y.", "New task in the same field:", True) == "Do Y."
    assert extract_instruction(" cave diving", "New task in the same field:", True) == ""


def test_steer_file_aims_breadth_at_thin_topics(seeds, tmp_path):
    from dataforge.curate.stats import compute_stats
    from dataforge.io import write_json_atomic

    items = [(Record(instruction=f"Bake bread variant {i}."), "cooking", "low") for i in range(12)]
    items += [(Record(instruction="Why do comets have two tails?"), "astronomy", "low")]
    stats = tmp_path / "stats.json"
    write_json_atomic(stats, compute_stats(items))
    with LoopbackServer(responder) as srv:
        run_evolve(seeds, tmp_path / "o.jsonl", EvolveConfig(rounds=1, ops=["breadth"], steer=str(stats),
                                                     keep_failed=True), backend=_backend(srv), progress=False)
        prompts = [b["messages"][-1]["content"] for b in srv.requests if "brand-new task" in json.dumps(b)]
    recs = list(read_records(tmp_path / "o.jsonl"))
    assert recs and all(r.topic == "astronomy" and r.task is None for r in recs)
    assert prompts and all("astronomy" in p and "Why do comets have two tails?" in p for p in prompts)


def test_append_phrase():
    from dataforge.generate.evolve import append_phrase

    assert append_phrase("Generate a haiku using the following word:", "Answer in at most 50 words.") == \
        "Generate a haiku using the following word. Answer in at most 50 words."
    assert append_phrase("Name a fruit", "Do not use any commas.") == "Name a fruit. Do not use any commas."
    assert append_phrase("Name a fruit?  ", "X.") == "Name a fruit? X."


def test_shards_together_equal_the_whole_run(seeds, tmp_path):
    def ids(p):
        return sorted(r.id for r in read_records(p))

    with LoopbackServer(responder) as srv:
        run_evolve(seeds, tmp_path / "all.jsonl", EvolveConfig(rounds=3), backend=_backend(srv), progress=False)
        for i in (1, 2):
            run_evolve(seeds, tmp_path / f"s{i}.jsonl", EvolveConfig(rounds=3, shard=f"{i}/2"),
                       backend=_backend(srv), progress=False)
    s1, s2 = ids(tmp_path / "s1.jsonl"), ids(tmp_path / "s2.jsonl")
    assert s1 and s2 and not set(s1) & set(s2)
    assert sorted(s1 + s2) == ids(tmp_path / "all.jsonl")
