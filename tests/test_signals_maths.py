"""The correctness signals' arithmetic, edges and wording, each against a hand-worked case: the rounding
tolerance of a stated result, which statements are checked, the sampling request self-consistency sends,
where a reference answer comes from, and the counts and note of the correctness summary."""

from __future__ import annotations

import pytest

from dataforge.llm import BackendConfig, make_llm, run_sync
from dataforge.quality.answers import Answer
from dataforge.quality.arithmetic import _evaluate, _holds, arithmetic_errors, check_arithmetic
from dataforge.quality.consistency import ConsistencySettings, SelfConsistency
from dataforge.quality.provenance import correctness_summary, gate_meta, judged_by
from dataforge.quality.reference_answers import check_reference, reference_of
from dataforge.records import Record
from dataforge.testing.loopback import Fault, LoopbackServer, last_user_message


# --- arithmetic --------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr,value", [
    ("6 × 7", 42.0), ("84 ÷ 2", 42.0), ("$1,000 + $250", 1250.0), ("-3 + 5", 2.0), ("3 x (4 - 1)", 9.0),
    ("+3", None),  # unary plus is not how anyone writes a sum: not checked
    ("2 ** 3", None), ("2 % 3", None), ("5 / 0", None), ("a + 1", None), ("1 +", None),
])
def test_evaluate(expr, value):
    assert _evaluate(expr) == value


@pytest.mark.parametrize("value,stated,holds", [
    (0.125, "0.2", False),  # 1/8 stated to one decimal: off by 0.075 > 0.05
    (0.125, "0.13", True),  # to two decimals: off by 0.005, the rounding bound, holds
    (0.348, "0.3", True),  # off by 0.048 <= 0.05
    (10 / 3, "3", True),  # an integer result is held to +-0.5
    (10 / 3, "3.0", False),  # ... but "3.0" claims one decimal
    (1350.0, "$1,350", True), (1250.0, "$1,350", False),
    (5.0, "five", True),  # not a number: nothing to check
    (1e12 + 0.9, "1000000000000", True),  # the 1e-9 relative slack is 1000 here
    (0.5 + 1.5e-9, "0", False),  # past 0.5 + 1e-9 * max(1, 0)
])
def test_holds_rounds_at_the_stated_precision(value, stated, holds):
    assert _holds(value, stated) is holds


def test_holds_bound_is_inclusive():
    bound = 0.5 * 10 ** -0 + 1e-9 * max(1.0, 0.0)  # exactly the tolerance for a stated "0"
    assert _holds(bound, "0") is True and _holds(-bound, "0") is True


@pytest.mark.parametrize("text,checked,wrong", [
    ("6 × 7 = 41 and 84 ÷ 2 = 42", 2, ["6 × 7 = 41"]),
    ("$1,000 + $250 = $1,350.", 1, ["$1,000 + $250 = $1,350"]),
    ("1/8 = 0.2 but 1/8 = 0.13", 2, ["1/8 = 0.2"]),
    ("<<-3+5=2>> and <<2**3=8>> and <<2+3=five>>", 2, []),  # unary minus; power not checked; word result
    ("<<2+2=4>>3 + 4 = 8", 2, ["3 + 4 = 8"]),  # the annotation leaves a space, not a word, behind
    ("x = 2 + 2 = 5 and 3 + 4 = 8", 1, ["3 + 4 = 8"]),  # a skipped chain does not end the scan
    ("5 / 0 = 0 and 2 + 2 = 5", 1, ["2 + 2 = 5"]),  # nor does a statement that cannot be evaluated
    ("chapter X 2 + 2 = 5", 1, ["2 + 2 = 5"]),  # a capital X before it is a word, not an operator
    ("2 + 2 = 5", 1, ["2 + 2 = 5"]),  # at the very start of the text
])
def test_arithmetic_statements(text, checked, wrong):
    assert arithmetic_errors(text) == (checked, wrong)


def test_check_arithmetic_lists_the_first_three_wrong():
    text = "1 + 1 = 3, 2 + 2 = 5, 3 + 3 = 7, 4 + 4 = 9, 5 + 5 = 10"
    assert check_arithmetic(text) == (0.0, "wrong: 1 + 1 = 3; 2 + 2 = 5; 3 + 3 = 7")


# --- self-consistency --------------------------------------------------------------------------------

def _answers(table):
    """A responder answering each prompt by the first key of `table` found in it."""
    def respond(body):
        msg = last_user_message(body)
        for key, texts in table.items():
            if key in msg:
                return list(texts)[: body.get("n") or 1]
        raise AssertionError(f"unexpected prompt {msg!r}")
    return respond


def test_consistency_request_and_counters():
    table = {"apples": ["#### 5"] * 2 + ["#### 6"] * 2, "Pick": ["I think it is 7"] * 4,
             "long": ["It is 7 I think"] * 4}
    with LoopbackServer(_answers(table), models=("gpt-4o",)) as srv:
        llm = make_llm(BackendConfig(base_url=srv.base_url, model="gpt-4o", no_cache=True, max_retries=0))
        sc = SelfConsistency(llm, ConsistencySettings(samples=4, temperature=0.3))
        assert (sc.errors, sc.sampled) == (0, 0)
        r = Record(instruction="Tom has apples. How many?", input="3 and 2 more", output="#### 5")
        assert run_sync(sc.check(r, r.output)) == (0.5, None)  # 2 of 4 agree: half is enough
        body = srv.requests[-1]
        assert body["temperature"] == 0.3 and body["n"] == 4 and body["seed"] == 0 and body["max_tokens"] == 512
        assert "3 and 2 more" in last_user_message(body)  # the record's input is part of the prompt
        # a 5-word sample is no final answer for a 2-word response ...
        pick = Record(instruction="Pick a number.", output="#### 7")
        assert run_sync(sc.check(pick, pick.output)) == (0.0, "0/4 samples agree with 7")
        # ... but is for a 6-word one (samples may be as long as the response)
        long = Record(instruction="Count the long list.", output="After counting, the answer is 7")
        assert run_sync(sc.check(long, long.output)) == (1.0, None)
        assert (sc.errors, sc.sampled) == (0, 3)
        seeded = SelfConsistency(llm, ConsistencySettings(samples=1, max_tokens=64), seed=3)
        assert run_sync(seeded.check(r, r.output)) == (1.0, None)  # 1 sample, 1 agrees: all of them
        assert srv.requests[-1]["seed"] == 3 and srv.requests[-1]["max_tokens"] == 64


def test_consistency_lists_at_most_three_other_answers():
    table = {"guess": ["#### 1", "#### 2", "#### 3", "#### 4", "#### 9"]}
    with LoopbackServer(_answers(table), models=("gpt-4o",)) as srv:
        llm = make_llm(BackendConfig(base_url=srv.base_url, model="gpt-4o", no_cache=True))
        sc = SelfConsistency(llm, ConsistencySettings(samples=5))
        r = Record(instruction="A guess?", output="#### 9")
        assert run_sync(sc.check(r, r.output)) == (0.2, "1/5 samples agree with 9 (others: 1, 2, 3)")


def test_consistency_failed_sampling_is_counted_not_passed():
    with LoopbackServer(_answers({}), faults=lambda body: Fault("400"), models=("gpt-4o",)) as srv:
        llm = make_llm(BackendConfig(base_url=srv.base_url, model="gpt-4o", no_cache=True, max_retries=0))
        sc = SelfConsistency(llm, ConsistencySettings(samples=2))
        r = Record(instruction="Tom has apples. How many?", output="#### 5")
        assert run_sync(sc.check(r, r.output)) is None and run_sync(sc.check(r, r.output)) is None
        assert (sc.errors, sc.sampled) == (2, 0)


# --- reference answers -------------------------------------------------------------------------------

@pytest.mark.parametrize("meta,output,refs", [
    ({"reference_answer": 5}, "", [Answer("number", "5")]),
    ({"reference_answer": "1,250.0"}, "", [Answer("number", "1250")]),
    ({"reference_answer": "Not Spam!"}, "", [Answer("label", "not spam")]),
    ({"reference_answer": "   "}, "", None),  # blank: no reference
    ({"labels": ["Positive", " ", "Negative"]}, "", [Answer("label", "positive"), Answer("label", "negative")]),
    ({"labels": "positive"}, "", None),  # not a list of labels
    ({"labels": []}, "", None),
    ({"is_classification": True}, "5", None),  # a number is not a class label
    ({"is_classification": True}, "A long answer that is no label at all, and goes on.", None),
    ({}, "The answer comes after the #### marker, not here.", None),  # "####" without a number
    ({}, "so #### 72", [Answer("number", "72")]),
])
def test_reference_of(meta, output, refs):
    assert reference_of(Record(instruction="q", output=output, meta=meta)) == refs


def test_check_reference_words_and_details():
    six = Record(instruction="q", meta={"reference_answer": "not a question about the weather"})
    assert check_reference(six, "Not a question about the weather.") == (1.0, None)  # labels up to 12 words
    words13 = "one two three four five six seven eight nine ten eleven twelve thirteen"
    long = Record(instruction="q", meta={"reference_answer": words13})
    assert check_reference(long, words13) == (0.0, f"answer missing != reference {words13}")
    num = Record(instruction="q", meta={"reference_answer": 7})
    assert check_reference(num, "It is 7") == (1.0, None)
    assert check_reference(num, "I think it is 7") == (0.0, "answer missing != reference 7")  # 5 words
    many = Record(instruction="q", meta={"labels": ["a1", "b2", "c3", "d4", "e5", "f6"]})
    assert check_reference(many, "g7") == (0.0, "answer g7 != reference a1 | b2 | c3 | d4 | e5")
    gsm = Record(instruction="q", output="48/2 = 24\n#### 72")
    assert check_reference(gsm, "I am not sure at all about this one.") == (0.0, "answer missing != reference 72")


# --- provenance --------------------------------------------------------------------------------------

def test_judged_by_and_gate_meta():
    assert judged_by({"alignment_local": 0.9}, None) == "embedding"
    assert gate_meta({"alignment": 1.0, "consistency": 0.8, "reference_answer": 1.0}, "gpt-4o", ["contradiction"]) == {
        "judged_by": "model:gpt-4o", "signals": ["reference_answer", "consistency"], "unjudged": ["contradiction"]}


def _rec(i, status, gate):
    return Record(instruction=f"t{i}", status=status, meta={"gate": gate} if gate is not None else {})


def test_correctness_summary_counts_and_note():
    recs = [_rec(i, s, g) for i, (s, g) in enumerate([
        ("accepted", {"judged_by": "embedding", "signals": ["arithmetic", "consistency"]}),
        ("accepted", {"judged_by": "embedding", "signals": ["arithmetic"]}),
        ("accepted", {}),
        ("accepted", {"judged_by": "model:gpt-4o", "signals": ["reference_answer"]}),
        ("review", {"judged_by": "heuristics", "signals": ["execution"], "unjudged": ["alignment"]})])]
    s = correctness_summary(recs)
    assert s == {
        "accepted_judged_by": {"embedding": 2, "unknown": 1, "model:gpt-4o": 1},
        "accepted_without_model_judge": 3, "unjudged": {"alignment": 1},
        "signals_on_accepted": {"arithmetic": 2, "consistency": 1, "reference_answer": 1},
        "note": "correctness was not checked by a model judge for 3 of 4 accepted records: they rest on "
                "embedding and heuristic checks alone (plus the correctness signals that applied to them); "
                "use a capable judge (--judge-model / --base-url) to check them"}
    bare = correctness_summary([_rec(0, "accepted", {"judged_by": "heuristics"}), _rec(1, "accepted", None)])
    assert bare["signals_on_accepted"] == {} and bare["accepted_judged_by"] == {"heuristics": 1, "unknown": 1}
    assert bare["note"] == ("correctness was not checked by a model judge for 2 of 2 accepted records: they rest "
                            "on embedding and heuristic checks alone; use a capable judge (--judge-model / "
                            "--base-url) to check them")
