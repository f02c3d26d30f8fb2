"""The gate's checks against hand-computed references: the complexity formula term by term with its caps, the
format share, ending conventions at their group-size and share thresholds, coherence / reference / alignment
ranks from chosen vectors, the judge scores' routing, and the id-hash prompt pool."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random

import numpy as np
import pytest

from dataforge.constraints import make_spec
from dataforge.quality.checks import (Checker, EndingShapes, _pair, complexity_features, constraint_specs,
                                      finish_reason_of, format_score, group_key, hash_pool)
from dataforge.quality.rules import load_rules
from dataforge.records import Lineage, Record
from vector_helpers import FixedVectors, at_angle

# ---------------------------------------------------------------- complexity: 1 + six capped terms, clipped to 1-10


def test_complexity_formula_by_hand_under_every_cap():
    r = Record(instruction="Compare apples and pears. Which one keeps longer in 2 weeks?", lineage=Lineage(round=1))
    # 11 words; 1 constraint; 1 reasoning cue (compare); 1 number (2); 2 sentences; round 1
    want = 1 + 1.5 * math.log2(1 + 11 / 15) + 1 * 1.0 + 1 * 0.4 + 1 * 0.15 + (2 - 1) * 0.3 + 1 * 0.5
    assert complexity_features(r, 1) == pytest.approx(want)


@pytest.mark.parametrize("name,record,n_constraints,term", [
    # each term pushed past its cap on its own: the cap is what counts
    ("length", Record(instruction=" ".join(["word"] * 2000)), 0, 3.0),
    ("constraints", Record(instruction="x"), 7, 3.0),
    ("reasoning", Record(instruction="compare contrast justify prove derive evaluate"), 0, 1.2),
    ("numbers", Record(instruction="1 2 3 4 5 6 7 8 9 10"), 0, 1.0),
    ("sentences", Record(instruction="A. B. C. D. E. F. G. H."), 0, 1.0),
    ("depth", Record(instruction="x", lineage=Lineage(round=9)), 0, 2.0),
])
def test_complexity_caps(name, record, n_constraints, term):
    words = len(record.prompt_text.split())
    base = 1 + 1.5 * math.log2(1 + words / 15) if name != "length" else 1.0
    got = complexity_features(record, n_constraints)
    assert got == pytest.approx(min(base + term, 10.0)), name


def test_complexity_counts_input_text_but_sentences_of_the_instruction_only():
    r = Record(instruction="Sum these.", input="Values: 3, 4.5 and 10. Then report. Why?", lineage=Lineage(round=0))
    text = r.prompt_text
    words = len(text.split())
    # numbers 3, 4.5, 10; cues: then; sentences of the instruction: 1
    want = 1 + 1.5 * math.log2(1 + words / 15) + 0.4 + 3 * 0.15
    assert complexity_features(r, 0) == pytest.approx(want)
    assert complexity_features(Record(instruction="v1.2 x3"), 0) == pytest.approx(1 + 1.5 * math.log2(1 + 2 / 15))


def test_complexity_is_clipped_to_ten():
    r = Record(instruction=" ".join(["Compare, then justify step by step 12 items."] * 60), lineage=Lineage(round=4))
    assert complexity_features(r, 3) == 10.0


# ---------------------------------------------------------------- constraints and the format share


def test_constraint_specs_attached_first_then_new_detected_types():
    r = Record(instruction="Describe the Moon in at most 10 words without using any commas.",
               meta={"constraints": [make_spec("no_commas"), {"params": {}}, "word_count", None]})
    specs = constraint_specs(r)
    assert [s["type"] for s in specs] == ["no_commas", "word_count"]  # the attached no_commas is not repeated
    assert specs[1]["params"] == {"relation": "at_most", "n": 10}
    assert constraint_specs(Record(instruction="Say hi.")) == []


def test_format_share_and_details():
    specs = [make_spec("no_commas"), make_spec("word_count", relation="at_most", n=3),
             make_spec("end_with", phrase="Bye."), {"type": "nope", "params": {}}]
    r = Record(instruction="Greet.", meta={"constraints": specs})
    score, detail = format_score(r, "Hi, friend. Bye.")
    assert score == 2 / 4  # no_commas and the unknown type fail; 3 words and the ending are fine
    assert detail.startswith("no_commas(1 comma); nope(unknown constraint type 'nope'; known: ")
    assert format_score(r.model_copy(update={"meta": {}}), "anything") == (1.0, None)
    ok = Record(instruction="Greet.", meta={"constraints": specs[:3]})
    assert format_score(ok, "Hello friend. Bye.") == (1.0, None)


# ---------------------------------------------------------------- ending conventions


def _gsm(i: int, source: str = "gsm", output: str | None = None) -> Record:
    return Record(instruction=f"q{i}", output=output or f"{i} + 1 = {i + 1}\n#### {i + 1}", meta={"source": source})


def test_group_key_and_finish_reason():
    assert group_key(Record(instruction="a", task="t", meta={"source": "s"})) == "s"
    assert group_key(Record(instruction="a", task="t")) == "t" and group_key(Record(instruction="a")) == "*"
    assert finish_reason_of(Record(instruction="a", meta={"evol": {"answer_truncated": True}})) == "length"
    assert finish_reason_of(Record(instruction="a", meta={"evol": {"answer_truncated": False},
                                                          "finish_reason": "stop"})) == "stop"
    assert finish_reason_of(Record(instruction="a", meta={"evol": "x", "finish_reason": "length"})) == "length"
    assert finish_reason_of(Record(instruction="a")) is None


@pytest.mark.parametrize("n_group,n_marked,learned", [
    (30, 23, True),    # 23/30 = 0.767 >= 0.75, group of 30: learned
    (30, 22, False),   # 22/30 = 0.733 < 0.75
    (29, 29, False),   # every response has it, but the group is below 30
    (40, 30, True),    # exactly 0.75
])
def test_ending_convention_thresholds(n_group, n_marked, learned):
    shapes = EndingShapes()
    for i in range(n_group):
        shapes.add(_gsm(i) if i < n_marked else _gsm(i, output=f"The answer is {i}."))
    shapes.add(_gsm(99, output="   "))  # an empty response is not counted
    shapes.finish()
    cut = _gsm(0, output="5 + 1 = 6")
    assert shapes.odd_ending(cut, cut.output) is learned
    assert ("gsm" in shapes.dominant) is learned
    assert sum(shapes.counts["gsm"].values()) == n_group


def test_plain_word_endings_are_no_convention():
    shapes = EndingShapes(min_group=5, min_share=0.5)
    for i in range(10):
        shapes.add(_gsm(i, source="prose", output="Some text.\nThank you"))
    shapes.finish()
    assert shapes.dominant == {}  # 'a a' is words only: no marker
    shapes = EndingShapes(min_group=5, min_share=0.5)
    for i in range(10):
        shapes.add(_gsm(i, source="q", output="Text.\nA: 7"))
    shapes.finish()
    assert shapes.dominant == {"q": "a: 9"}
    assert not shapes.odd_ending(_gsm(1, source="q"), "Text.\nB: 12")
    assert shapes.odd_ending(_gsm(1, source="q"), "Text.\nSo 12")


# ---------------------------------------------------------------- text checks (no embedder needed)


def test_text_checks_scores_and_details():
    checker = Checker(load_rules(), None)
    r = Record(instruction="Should I invest my retirement savings in the stock market? Answer without commas.",
               output="As an AI language model, I cannot give financial advice on a portfolio and")
    sc = checker.text_checks(r, r.output)
    assert sc.scores["structure"] == 1.0 and "structure" not in sc.details
    assert sc.scores["refusal"] == 0.0 and sc.details["refusal"] == "as an ai language model"
    assert sc.scores["truncation"] == 0.0 and "dangling_word" in sc.details["truncation"]
    assert sc.scores["format"] == 0.0 and sc.details["format"].startswith("no_commas(")
    assert sc.domains == ["finance"]
    assert sc.scores["complexity"] == round(complexity_features(r, 1), 3)
    empty = checker.text_checks(r, "  ")
    assert empty.scores["structure"] == 0.0 and empty.details["structure"] == "empty_output"
    assert empty.scores["truncation"] == 1.0 and "truncation" not in empty.details  # nothing to call cut
    fine = checker.text_checks(Record(instruction="Name a colour."), "Blue.", finish_reason="length")
    assert fine.scores["truncation"] == 0.0 and fine.details["truncation"] == "finish_reason=length"
    assert fine.scores["format"] == 1.0 and "format" not in fine.details and fine.scores["refusal"] == 1.0
    leftover = checker.text_checks(Record(instruction="Hi"), "Hello<|im_end|>")
    assert leftover.scores["structure"] == 0.0 and leftover.details["structure"].startswith("template_marker")


def test_text_checks_flag_an_unusual_ending():
    shapes = EndingShapes()
    for i in range(40):
        shapes.add(_gsm(i))
    checker = Checker(load_rules(), None, shapes=shapes.finish())
    sc = checker.text_checks(_gsm(1), "2 + 1 = 3.")
    assert sc.scores["truncation"] == 0.0 and sc.details["truncation"] == "unusual_ending"
    assert checker.text_checks(_gsm(1), "2 + 1 = 3\n#### 3").scores["truncation"] == 1.0


# ---------------------------------------------------------------- embedding scores from chosen vectors

POOL_ANGLES = [0.5, 15, 25, 45, 62, 75, 100, 130, 160, 180, 200, 220, 250, 280, 300, 330]


def _pool_checker(n_pool: int = 16, reference=()) -> tuple[Checker, FixedVectors]:
    vectors = {f"pool {a}": at_angle(a) for a in POOL_ANGLES}
    vectors.update({"prompt": at_angle(0), "answer": at_angle(30), "short": at_angle(90), "far": at_angle(170)})
    emb = FixedVectors(vectors)
    pool = [f"pool {a}" for a in POOL_ANGLES[:n_pool]]
    return Checker(load_rules(), emb, pool_prompts=pool + pool[:2], reference=reference), emb


def test_alignment_rank_by_hand():
    """Own prompt at 0 deg, response at 30 deg (own match cos 30). Pool prompt at 0.5 deg is the record's own
    prompt again (cos > 0.98): left out. Of the other 15, those at 15, 25 and 45 deg match the response better;
    12 match it worse: global 12/15. The 4 pool prompts nearest the own prompt are at 15, 25, 330 and 45 deg;
    only 330 (cos 60 to the response) is beaten: local 1/4."""
    checker, _ = _pool_checker()
    ep, eo = np.array([at_angle(0)]), np.array([at_angle(30)])
    glob, local = checker.alignment_rank(ep, eo, k=4)
    assert glob == [pytest.approx(12 / 15)] and local == [pytest.approx(1 / 4)]
    glob, local = checker.alignment_rank(ep, eo)  # k = 32 > pool: every other prompt is a neighbour
    assert glob == [pytest.approx(12 / 15)] and local == [pytest.approx(12 / 15)]
    glob, local = checker.alignment_rank(ep, eo, k=1)
    assert local == [0.0]  # the nearest (15 deg) matches the response better


def test_alignment_rank_needs_a_pool_of_16_and_a_comparable_prompt():
    small, _ = _pool_checker(n_pool=15)
    ep, eo = np.array([at_angle(0)]), np.array([at_angle(30)])
    assert small.alignment_rank(ep, eo) == ([None], [None])
    assert Checker(load_rules(), FixedVectors({})).alignment_rank(ep, eo) == ([None], [None])
    full, _ = _pool_checker()
    # a prompt at 0.5 deg of every pool prompt is impossible in the plane; two rows: one normal, one whose
    # prompt is its own pool twin (0.5 deg) facing the far side
    glob, local = full.alignment_rank(np.array([at_angle(0), at_angle(0.5)]), np.array([at_angle(30), at_angle(180)]))
    assert glob[0] == pytest.approx(12 / 15) and glob[1] == pytest.approx(0 / 15)


def test_scores_from_chosen_vectors():
    ref = [Record(instruction="prompt", output="far")]
    checker, emb = _pool_checker(reference=ref)
    long = Record(instruction="prompt", output="answer")
    short = Record(instruction="prompt", output="short")
    emb.vectors["answer"] = at_angle(30)
    emb.vectors["short"] = at_angle(90)
    # short answers (<= 3 words) get no coherence or alignment ranks; "answer" is 1 word too, so widen it
    emb.vectors["a long enough answer"] = at_angle(30)
    long = long.model_copy(update={"output": "a long enough answer"})
    a, b = asyncio.run(checker.score([long, short]))
    assert a.scores["coherence"] == round(math.cos(math.radians(30)), 4)
    assert a.scores["alignment_emb"] == round(12 / 15, 4) and a.scores["alignment_local"] == round(12 / 15, 4)
    # reference: cosine of the normalised (prompt + response) pairs: angles 15 and 85 deg -> cos 70 deg
    assert a.scores["reference"] == round(math.cos(math.radians(70)), 4)
    assert "coherence" not in b.scores and "alignment_emb" not in b.scores and "alignment_local" not in b.scores
    assert "reference" in b.scores and "alignment" not in a.scores
    # drafts (refine): scores of the given outputs, and no finish reason from the record
    cut = long.model_copy(update={"meta": {"finish_reason": "length"}})
    (c,) = asyncio.run(checker.score([cut]))
    assert c.scores["truncation"] == 0.0
    (d,) = asyncio.run(checker.score([cut], outputs=["a long enough answer"]))
    assert d.scores["truncation"] == 1.0 and d.scores["coherence"] == a.scores["coherence"]


def test_pair_vectors_are_normalised_sums():
    v = _pair(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 0.0]]))
    assert v[0] == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)]) and np.all(v[1] == 0.0)


# ---------------------------------------------------------------- judge scores


def test_judge_scores_routing_and_complexity_average():
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.quality.judges import Judge
    from dataforge.testing.loopback import Fault, LoopbackServer, last_user_message

    def judge(body):
        text = last_user_message(body)
        if "Rate how complex" in text:
            return json.dumps({"score": 8})
        if "broken record" in text:
            return Fault("400")
        return "yes" if "carry out" in text else "no"

    emb = FixedVectors({"Name a colour.": at_angle(0), "Blue is a calm colour.": at_angle(10),
                        "Explain this broken record.": at_angle(0), "It skips a beat here.": at_angle(20),
                        "": at_angle(45), "Name a shape.": at_angle(0)})
    records = [Record(instruction="Name a colour.", output="Blue is a calm colour."),
               Record(instruction="Explain this broken record.", output="It skips a beat here."),
               Record(instruction="Name a shape.", output="")]
    with LoopbackServer(judge) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True,
                                     max_retries=0))
        checker = Checker(load_rules(), emb, judge=Judge(llm))
        ok, failed, empty = asyncio.run(checker.score(records))
        asked = [json.dumps(b) for b in srv.requests]
        no_cx = asyncio.run(checker.score(records[:1], judge_complexity=False))[0]
        asyncio.run(llm.aclose())
    base = round(complexity_features(records[0], 0), 3)
    assert ok.scores["alignment"] == 1.0 and ok.scores["contradiction"] == 0.0
    assert ok.scores["complexity_judge"] == 8.0 and ok.scores["complexity"] == round((base + 8.0) / 2, 3)
    assert "alignment_emb" not in ok.scores  # a judge replaces the embedding ranks
    # the broken record's yes/no requests failed: no judge score rather than a made-up one, and it says so
    assert "alignment" not in failed.scores and "contradiction" not in failed.scores
    assert sorted(failed.unjudged) == ["alignment", "contradiction"] and not ok.unjudged
    assert failed.scores["complexity_judge"] == 8.0
    # nothing is asked about an empty response
    assert not {"alignment", "contradiction", "complexity_judge"} & set(empty.scores)
    assert not any("Name a shape." in a for a in asked) and any("Name a colour." in a for a in asked)
    assert "complexity_judge" not in no_cx.scores and no_cx.scores["complexity"] == base


def test_judge_verdicts_on_drafts_route_scores_and_reasons():
    """Refine drafts are judged as written (not the record's output); a failed verdict's reason becomes the
    check's detail, a passed one's does not: alignment fails on "no", contradiction on "yes"."""
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.quality.judges import Judge
    from dataforge.testing.loopback import Fault, LoopbackServer, last_user_message

    def judge(body):
        if body.get("logprobs"):
            return Fault("400")  # no logprobs here: the judge asks for a verdict with a reason
        text = last_user_message(body)
        check = "alignment" if "carry out" in text else "contradiction"
        bad = "DRAFT-BAD" in text
        verdict, reason = {("alignment", True): ("no", "It answers another question."),
                           ("alignment", False): ("yes", "It does the task."),
                           ("contradiction", True): ("yes", "It says 3 and then 4."),
                           ("contradiction", False): ("no", "It is consistent.")}[check, bad]
        return json.dumps({"verdict": verdict, "reason": reason})

    drafts = ["DRAFT-BAD green is calm, or three, or four colours", "DRAFT-OK red is warm and bright today"]
    emb = FixedVectors({"Name a colour.": at_angle(0), "Name a warm colour.": at_angle(5),
                        drafts[0]: at_angle(30), drafts[1]: at_angle(10)})
    records = [Record(instruction="Name a colour.", output="ORIGINAL-A"),
               Record(instruction="Name a warm colour.", output="ORIGINAL-B")]
    with LoopbackServer(judge) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True,
                                     max_retries=0))
        bad, good = asyncio.run(Checker(load_rules(), emb, judge=Judge(llm)).score(records, drafts,
                                                                                    judge_complexity=False))
        asked = [json.dumps(b) for b in srv.requests]
        asyncio.run(llm.aclose())
    assert not any("ORIGINAL" in a for a in asked) and sum("DRAFT-BAD" in a for a in asked) >= 2
    assert (bad.scores["alignment"], bad.scores["contradiction"]) == (0.0, 1.0)
    assert bad.details["alignment"] == "It answers another question."
    assert bad.details["contradiction"] == "It says 3 and then 4."
    assert (good.scores["alignment"], good.scores["contradiction"]) == (1.0, 0.0)
    assert "alignment" not in good.details and "contradiction" not in good.details
    assert not bad.unjudged and not good.unjudged


def test_signals_execution_limits_and_self_consistency_in_the_checker():
    """Execution runs each response's Python blocks under the rules' limits (timeout, max_blocks); the
    arithmetic signal and self-consistency add their scores and details; an empty response is not sampled."""
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.quality.consistency import ConsistencySettings, SelfConsistency
    from dataforge.testing.loopback import LoopbackServer, last_user_message

    slow = "Run:\n```python\nimport time\ntime.sleep(3)\nprint('done')\n```"
    two = "Run:\n```python\nprint(2)\n```\nthen\n```python\nprint(1 / 0)\n```"
    big = "Run:\n```python\nx = bytearray(300 * 2**20)\nprint(len(x))\n```"  # fits the default 512 MB
    rules = load_rules(overrides={"signals": {"execution": {"timeout": 1, "max_blocks": 1, "memory_mb": 256}}})
    emb = FixedVectors({"Show a slow script.": at_angle(0), slow: at_angle(5), "Show two scripts.": at_angle(0),
                        two: at_angle(5), "Show a big script.": at_angle(0), big: at_angle(5)})
    checker = Checker(rules, emb)
    timed_out, first_only, too_big = asyncio.run(checker.score([
        Record(instruction="Show a slow script.", output=slow), Record(instruction="Show two scripts.", output=two),
        Record(instruction="Show a big script.", output=big)]))
    assert too_big.scores["execution"] == 0.0 and too_big.details["execution"] == "block 1: MemoryError (memory limit)"
    assert timed_out.scores["execution"] == 0.0 and timed_out.details["execution"] == "block 1: timeout after 1s"
    assert first_only.scores["execution"] == 1.0 and "execution" not in first_only.details

    def sampler(body):
        n = body["n"]
        if "apples" in last_user_message(body):  # 4 of 5 say 5
            return ["3 + 2 = 5, so #### 5"] * (n - 1) + ["#### 6"]
        return ["#### 7", "#### 8", "#### 9", "no idea", "#### 7"][:n]

    records = [Record(instruction="Tom has 3 apples and gets 2. How many?", output="#### 5"),
               Record(instruction="Pick a number.", output="#### 7"),
               Record(instruction="Pick another number.", output=""),
               Record(instruction="Ann has 7 boxes of 8 pens. How many pens?", output="7 x 8 = 54, so #### 7"),
               Record(instruction="Pick a last number.", output="#### 7<|im_end|>"),  # broken: not sampled
               Record(instruction="Print a number.", output="```python\nprint(7)\n```\n#### 7")]
    emb = FixedVectors({t: at_angle(i * 10) for i, t in enumerate(
        [r.instruction for r in records] + [r.output for r in records])})
    with LoopbackServer(sampler, models=("gpt-4o",)) as srv:
        llm = make_llm(BackendConfig(base_url=srv.base_url, model="gpt-4o", no_cache=True))
        consistency = SelfConsistency(llm, ConsistencySettings(samples=5))
        no_exec = load_rules(overrides={"signals": {"execution": {"enabled": False}}})
        sure, guess, empty, wrong, broken, code = asyncio.run(
            Checker(no_exec, emb, consistency=consistency).score(records))
        asked = srv.request_count
        asyncio.run(llm.aclose())
    assert sure.scores["consistency"] == 0.8 and "consistency" not in sure.details
    assert guess.scores["consistency"] == 0.4 and guess.details["consistency"] == "2/5 samples agree with 7 (others: 8, 9)"
    # nothing sampled for the empty response or the one with a template marker left in it
    assert "consistency" not in empty.scores and "consistency" not in broken.scores and asked == 4
    assert broken.scores["structure"] == 0.0 and code.scores["consistency"] == 0.4
    assert "execution" not in code.scores  # execution switched off: the block is not run
    assert wrong.scores["arithmetic"] == 0.0 and wrong.details["arithmetic"] == "wrong: 7 x 8 = 54"
    assert sure.scores["reference_answer"] == 1.0 and "reference_answer" not in empty.scores


# ---------------------------------------------------------------- the prompt pool


def test_hash_pool_takes_the_smallest_id_hashes_in_any_order():
    records = [Record(instruction=f"task {i}") for i in range(40)]

    def h(r):
        return int.from_bytes(hashlib.blake2b(r.id.encode(), digest_size=8).digest(), "big")

    want = [r.prompt_text for r in sorted(records, key=h)[:7]]
    assert hash_pool(records, k=7) == want
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert hash_pool(shuffled, k=7) == want
    assert hash_pool(records[:5], k=7) == [r.prompt_text for r in sorted(records[:5], key=h)]
    assert len(hash_pool(records)) == 40


# ---------------------------------------------------------------- bounds the tests above leave open


def test_text_checks_bounds_joined_signals_and_rounded_format_share():
    checker = Checker(load_rules(), None)
    # an empty response is no truncation even when the generator ran out of tokens (structure flags it)
    empty = checker.text_checks(Record(instruction="Name a colour."), "", finish_reason="length")
    assert empty.scores["truncation"] == 1.0 and empty.scores["structure"] == 0.0
    cut = checker.text_checks(Record(instruction="Show code."), "Here:\n```python\nx = 1", finish_reason="length")
    assert cut.details["truncation"] == "finish_reason=length+open_code_fence"
    # two of three attached constraints met: 2/3 rounded to 4 places
    specs = [make_spec("lowercase"), make_spec("no_commas"), make_spec("word_count", relation="at_least", n=50)]
    sc = checker.text_checks(Record(instruction="Describe the sea.", meta={"constraints": specs}), "the sea is wide.")
    assert sc.scores["format"] == 0.6667


def test_format_score_reports_every_malformed_spec():
    specs = [{"type": "no_such_type"}, {"type": "also_missing"}, make_spec("lowercase")]
    share, detail = format_score(Record(instruction="Write.", meta={"constraints": specs}), "all lower")
    assert share == pytest.approx(1 / 3)
    assert detail.startswith("no_such_type(") and "; also_missing(" in detail


def test_hash_pool_default_size_is_512():
    records = [Record(instruction=f"task {i}") for i in range(520)]
    assert len(hash_pool(records)) == 512 and len(set(hash_pool(records))) == 512


def test_alignment_rank_ties_threshold_and_no_comparable_prompt():
    """Ties are not 'worse'; a pool prompt at cosine exactly 0.98 to the own prompt still counts (only above
    0.98 is it the same prompt); a pool of twins leaves nothing to rank against: no score, not 0."""
    near = [0.98, math.sqrt(1 - 0.98 ** 2)]
    # own prompt at 30 deg, response at 0 deg (own match cos 30); 17 pool prompts: the mirror at -30 deg ties,
    # `near` (cos 0.98 to the prompt's 0 deg twin below) and 15 others
    vectors = {f"p{i}": at_angle(a) for i, a in enumerate([100, 110, 120, 130, 140, 150, 160, 170, 180, 190,
                                                           200, 210, 220, 230, 240])}
    vectors.update({"mirror": at_angle(-30), "near": near})
    pool = list(vectors)
    checker = Checker(load_rules(), FixedVectors(vectors), pool_prompts=pool)
    glob, local = checker.alignment_rank(np.array([at_angle(30)]), np.array([at_angle(0)]))
    # worse than cos 30: the 15 far ones; the mirror ties (not worse); near (cos 0.98 vs x axis > cos 30) is better.
    # local: the 16 nearest the prompt (all but 210 deg, which is worse): 14/16
    assert glob == [pytest.approx(15 / 17)] and local == [pytest.approx(14 / 16)]
    # prompt on the x axis, response on `near`: near is at cos exactly 0.98 to the prompt, so it stays in the
    # pool and matches the response better than the prompt does: 16 of 17 worse (local: 180 deg left out, 15/16)
    glob, local = checker.alignment_rank(np.array([[1.0, 0.0]]), np.array([near]))
    assert glob == [pytest.approx(16 / 17)] and local == [pytest.approx(15 / 16)]
    twins = Checker(load_rules(), FixedVectors({f"t{i}": at_angle(0) for i in range(16)}),
                    pool_prompts=[f"t{i}" for i in range(16)])
    assert twins.alignment_rank(np.array([at_angle(0)]), np.array([at_angle(30)])) == ([None], [None])


def test_three_word_answers_get_no_embedding_scores_and_ranks_keep_four_places():
    vectors = {f"p{i}": at_angle(a) for i, a in enumerate([25] + [45 + 8 * i for i in range(17)])}
    vectors.update({"Say it.": at_angle(0), "one two three": at_angle(20), "one two three four": at_angle(20)})
    checker = Checker(load_rules(), FixedVectors(vectors), pool_prompts=[f"p{i}" for i in range(18)])
    three, four = asyncio.run(checker.score([Record(instruction="Say it.", output="one two three"),
                                             Record(instruction="Say it.", output="one two three four")]))
    assert "coherence" not in three.scores and "alignment_emb" not in three.scores
    assert four.scores["coherence"] == round(math.cos(math.radians(20)), 4)
    # own match cos 20; of 18 pool prompts only the one at 25 deg matches the 20 deg response better: 17/18;
    # locally, among the 17 nearest the prompt (173 deg left out): 16/17
    assert four.scores["alignment_emb"] == 0.9444 and four.scores["alignment_local"] == 0.9412


def test_a_failed_extraction_is_noted_not_replaced_by_the_parser():
    from dataforge.quality.constraint_extraction import Extraction

    checker = Checker(load_rules(), None)
    checker.extracted["Answer in lowercase."] = Extraction(None, "timeout")
    sc = checker.text_checks(Record(instruction="Answer in lowercase."), "fine")
    assert sc.notes == ["constraint_extraction:not_run:timeout"] and sc.scores["format"] == 1.0
