"""Correctness signals that need no strong judge: final answers, reference answers, arithmetic, execution
in a sandbox, self-consistency — each against hand-worked cases, then together in the gate."""

from __future__ import annotations

import json

import pytest

from dataforge.llm import BackendConfig, make_llm, run_sync
from dataforge.quality.answers import final_answer
from dataforge.quality.arithmetic import arithmetic_errors, check_arithmetic
from dataforge.quality.consistency import ConsistencySettings, SelfConsistency
from dataforge.quality.execution import ExecutionLimits, check_execution, code_blocks, run_block
from dataforge.quality.reference_answers import check_reference, reference_of
from dataforge.records import Record
from dataforge.testing.loopback import LoopbackServer, last_user_message


@pytest.mark.parametrize("text,kind,value", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "number", "72"),
    ("So the final answer is 1,250.", "number", "1250"),
    ("The answer: 3.50", "number", "3.5"),
    ("42", "number", "42"),
    ("Positive.", "label", "positive"),
    ("Not spam", "label", "not spam"),
    ("A long free-form explanation of photosynthesis with many words in it.", None, None),
    ("", None, None),
])
def test_final_answer(text, kind, value):
    a = final_answer(text)
    assert (a.kind, a.value) == (kind, value) if kind else a is None


def test_reference_answers():
    gsm = Record(instruction="How many clips?", output="48/2 = 24 in May, 48+24 = 72 in all.\n#### 72")
    assert [a.value for a in reference_of(gsm)] == ["72"]
    assert check_reference(gsm, gsm.output) == (1.0, None)
    assert check_reference(gsm, "They sold 70 clips.\n#### 70") == (0.0, "answer 70 != reference 72")
    assert check_reference(gsm, "I am not sure.")[0] == 0.0  # the answer went missing
    labelled = Record(instruction="Sentiment?", input="I loved it", output="Positive",
                      meta={"labels": ["Positive", "Negative"]})
    assert check_reference(labelled, "negative") == (1.0, None)  # another label of the task is still a label
    assert check_reference(labelled, "The review sounds happy to me.")[0] == 0.0
    cls = Record(instruction="Spam?", input="WIN NOW", output="Spam", meta={"is_classification": True})
    assert check_reference(cls, "spam.") == (1.0, None) and check_reference(cls, "Not spam")[0] == 0.0
    given = Record(instruction="2+2?", output="4", meta={"reference_answer": 5})
    assert check_reference(given, "4") == (0.0, "answer 4 != reference 5")
    assert reference_of(Record(instruction="Write a poem.", output="Roses are red.")) is None


@pytest.mark.parametrize("text,checked,wrong", [
    ("7 x 8 = 54, so", 1, ["7 x 8 = 54"]),
    ("3 * (4 + 1) = 15 and 22/7 = 3.14", 2, []),
    ("He had <<48/2=24>>24 then <<24*3=71>>71", 2, ["24*3=71"]),
    ("10X + 5 = 10, add 10 to both sides: 10 + 5 = 15", 1, []),  # algebra is not arithmetic
    ("$1,000 + $250 = $1,250.", 1, []),
    ("x = 2 + 2 = 5 and v2 + 3 = 7", 0, []),  # chained or attached to a name: not checked
    ("no numbers here", 0, []),
])
def test_arithmetic(text, checked, wrong):
    assert arithmetic_errors(text) == (checked, wrong)


def test_check_arithmetic_scores():
    assert check_arithmetic("So 10 + 5 = 16.") == (0.0, "wrong: 10 + 5 = 16")
    assert check_arithmetic("2 + 2 = 4") == (1.0, None) and check_arithmetic("Hello.") is None


@pytest.mark.parametrize("code,status,detail", [
    ("print(sum(range(10)))", "ok", ""),
    ("def f(:\n    pass", "failed", "SyntaxError"),
    ("print(1/0)", "failed", "ZeroDivisionError"),
    ("x = 'a' * (2 ** 31)", "failed", "MemoryError"),
    ("import not_a_module_here", "not_run", "ModuleNotFoundError"),
    ("name = input()", "not_run", "EOFError"),
    ("import socket\nsocket.create_connection(('127.0.0.1', 9))", "not_run", "socket"),
    ("import subprocess\nsubprocess.run(['true'])", "not_run", "subprocess.Popen"),
    ("import os\nos.system('true')", "not_run", "os.system"),
])
def test_run_block(code, status, detail):
    got, why = run_block(code)
    assert got == status and detail in why


def test_run_block_timeout_and_files_stay_in_a_temp_folder(tmp_path):
    assert run_block("while True:\n    pass", ExecutionLimits(timeout=1)) == ("failed", "timeout after 1s")
    status, _ = run_block(f"open('made.txt', 'w').write('x')\nimport os\nassert not os.path.exists({str(tmp_path)!r} + '/made.txt')")
    assert status == "ok"


def test_check_execution_over_blocks():
    good = "Here:\n```python\nprint(2 + 2)\n```\nand\n```py\nassert sorted([3, 1]) == [1, 3]\n```"
    assert len(code_blocks(good)) == 2 and check_execution(good) == (1.0, None)
    bad = "```python\nprint(2 + 2)\n```\n```python\nreturn_value = [1, 2\n```"
    score, detail = check_execution(bad)
    assert score == 0.0 and detail.startswith("block 2: SyntaxError")
    assert check_execution("```python\nimport pandas_not_here\n```") is None  # nothing ran: no score
    assert check_execution("No code, or ```js\nconsole.log(1)\n```") is None


def test_self_consistency_counts_agreeing_samples():
    def sampler(body):
        n = body["n"]
        if "apples" in last_user_message(body):  # 4 of 5 say 5
            return ["3 + 2 = 5, so #### 5"] * (n - 1) + ["#### 6"]
        return ["#### 7", "#### 8", "#### 9", "no idea", "#### 7"][:n]

    with LoopbackServer(sampler, models=("gpt-4o",)) as srv:
        llm = make_llm(BackendConfig(base_url=srv.base_url, model="gpt-4o", no_cache=True))
        sc = SelfConsistency(llm, ConsistencySettings(samples=5))
        sure = Record(instruction="Tom has 3 apples and gets 2. How many?", output="#### 5")
        guess = Record(instruction="Pick a number.", output="#### 7")
        assert run_sync(sc.check(sure, sure.output)) == (0.8, None)
        score, detail = run_sync(sc.check(guess, guess.output))
        assert score == 0.4 and detail == "2/5 samples agree with 7 (others: 8, 9)"
        assert run_sync(sc.check(sure, "A long explanation without any final number in it at all.")) is None
        assert all(b["n"] == 5 and b["temperature"] == 0.7 for b in srv.requests) and srv.request_count == 2


def test_gate_applies_the_signals(tmp_path):
    from dataforge.io import read_records
    from dataforge.quality.gate import FilterConfig, run_filter

    rows = [
        {"instruction": "Tom has 3 apples and buys 2 more. How many apples does he have now?",
         "output": "Tom starts with 3 apples and buys 2 more, so 3 + 2 = 5 apples in total.", "id": "ok"},
        {"instruction": "Ann has 7 boxes with 8 pens in each box. How many pens does she have?",
         "output": "Ann has 7 boxes with 8 pens each, so 7 x 8 = 54 pens in total.", "id": "sum"},
        {"instruction": "Write a Python function that returns the square of a number.",
         "output": "Here it is:\n```python\ndef square(n):\n    return n * n\nprint(square(4))\n```", "id": "code"},
        {"instruction": "Write a Python function that returns the cube of a number.",
         "output": "Here it is:\n```python\ndef cube(n):\n    return n ** 3\nprint(cube(2)\n```", "id": "broken"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "clean.jsonl"
    run_filter(src, out, FilterConfig(no_llm=True, dedup=False, no_reference=True), progress=False)
    recs = {r.id: r for p in (out, f"{out}.review.jsonl") for r in read_records(p)}
    assert recs["ok"].scores["arithmetic"] == 1.0 and recs["code"].scores["execution"] == 1.0
    assert recs["sum"].status == "review" and "arithmetic:wrong: 7 x 8 = 54" in recs["sum"].reasons
    assert recs["broken"].status == "review" and any(x.startswith("execution:block 1: SyntaxError")
                                                     for x in recs["broken"].reasons)


def test_provenance_says_who_judged():
    from dataforge.quality.provenance import correctness_summary, gate_meta, judged_by

    assert judged_by({"alignment": 1.0, "coherence": 0.5}, "gpt-4o") == "model:gpt-4o"
    assert judged_by({"alignment_emb": 0.99}, None) == "embedding"
    assert judged_by({"alignment_emb": 0.99}, "gpt-4o") == "embedding"  # the judge gave no verdict here
    assert judged_by({"structure": 1.0}, None) == "heuristics"
    assert gate_meta({"arithmetic": 1.0, "alignment_emb": 1.0}, None) == {
        "judged_by": "embedding", "signals": ["arithmetic"], "unjudged": []}
    recs = [Record(instruction=f"t{i}", status=s, meta={"gate": g}) for i, (s, g) in enumerate([
        ("accepted", {"judged_by": "model:gpt-4o", "signals": []}),
        ("accepted", {"judged_by": "embedding", "signals": ["arithmetic"]}),
        ("accepted", {"judged_by": "heuristics", "signals": []}),
        ("review", {"judged_by": "heuristics", "unjudged": ["alignment", "contradiction"]})])]
    s = correctness_summary(recs)
    assert s["accepted_judged_by"] == {"model:gpt-4o": 1, "embedding": 1, "heuristics": 1}
    assert s["accepted_without_model_judge"] == 2 and s["unjudged"] == {"alignment": 1, "contradiction": 1}
    assert s["note"].startswith("correctness was not checked by a model judge for 2 of 3 accepted records")
    assert correctness_summary(recs[:1])["note"] is None
