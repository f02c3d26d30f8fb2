"""Per-check tests on real text: structure, truncation, constraints (attached and detected), coherence
and alignment with the real MiniLM embedder, complexity, decision rules, judge answer parsing."""

from __future__ import annotations

import asyncio
import json

import pytest

from dataforge.constraints import make_spec
from dataforge.errors import DataforgeError
from dataforge.quality import structure
from dataforge.quality.checks import Checker, EndingShapes, complexity_features, format_score
from dataforge.quality.constraint_parser import parse_constraints
from dataforge.quality.embed import get_embedder
from dataforge.quality.judges import parse_score, yes_probability
from dataforge.quality.rules import DomainDetector, decide, load_rules
from dataforge.records import Lineage, Record

from conftest import EXAMPLES

GSM = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
       "How many clips did Natalia sell altogether in April and May?")
GSM_ANSWER = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
CODE_Q = "Write a Python function that returns the factorial of a non-negative integer n."
CODE_A = ("```python\ndef factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n"
          "    return result\n```\nThe loop multiplies every integer from 2 to n.")


# ---------------------------------------------------------------- structure


def test_structural_problems_are_named():
    assert structure.check_empty("  \n") == "empty_output"
    assert structure.check_empty(GSM_ANSWER) is None
    assert structure.check_template_leftovers("Sure!<|im_end|>\n<|im_start|>user").startswith("template_marker")
    assert structure.check_template_leftovers("Paris is the capital.\nUser: and Spain?").startswith("role_tag")
    assert structure.check_template_leftovers(CODE_A) is None
    assert structure.check_template_leftovers(GSM_ANSWER) is None  # GSM8K's <<48/2=24>> is no template marker
    assert structure.check_refusal("As an AI language model, I cannot browse the internet.") == "as an ai language model"
    # a program that prints the sentence, or a character who says it, is no refusal
    assert structure.check_refusal("const s = 'Hello, I am an AI assistant';\nconsole.log(s);") is None
    assert structure.check_refusal("I'm sorry, but I can't help with that request.") is not None
    assert structure.check_refusal("Sorry to hear your plant died; water it less often.") is None


@pytest.mark.parametrize("cut,signal", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+", "dangling_symbol"),
    ("```python\ndef factorial(n):\n    result = 1\n    for i in range(2, n", "open_code_fence"),
    ("The French Revolution began in 1789 and ended the monarchy, and", "dangling_word"),
    ("Photosynthesis turns light into chemical energy. Plants use chlorophyll to capture the", "dangling_word"),
    ("Summary of the French Revolution: wikipedia('French", "unclosed_bracket"),
    ('import requests\n\nurl = "https://jsonplaceholder.typicode', "open_quote"),
])
def test_truncated_responses_are_caught(cut, signal):
    assert signal in structure.truncation_signals(cut)


@pytest.mark.parametrize("text", [GSM_ANSWER, CODE_A, "Red, blue and yellow.",
                                  "Invitation to be a panelist for CVPR 2023 workshop on Multimodality",
                                  "Instability : Turmoil :: Change : Revolution"])
def test_finished_responses_are_not_flagged(text):
    assert structure.truncation_signals(text) == []


def test_finish_reason_length_is_a_signal(seeds):
    assert structure.truncation_signals("All good.", finish_reason="length") == ["finish_reason=length"]
    checker = Checker(load_rules(), get_embedder())
    cut = Record(instruction="Describe a sunrise.", output="The sky turns orange and pink.",
                 meta={"evol": {"answer_truncated": True}})
    (sc,) = asyncio.run(checker.score([cut]))
    assert sc.scores["truncation"] == 0.0 and sc.details["truncation"] == "finish_reason=length"


def test_ending_convention_learned_per_source():
    good = [Record(instruction=f"q{i}", output=f"{i} + 1 = {i + 1}\n#### {i + 1}", meta={"source": "gsm"})
            for i in range(40)]
    shapes = EndingShapes()
    for r in good:
        shapes.add(r)
    shapes.finish()
    cut = good[0].model_copy(update={"output": "5 + 1 = 6"})
    assert shapes.odd_ending(cut, cut.output) and not shapes.odd_ending(good[1], good[1].output)
    other = Record(instruction="x", output="5 + 1 = 6", meta={"source": "prose"})
    assert not shapes.odd_ending(other, other.output)  # no convention learned for that source


# ---------------------------------------------------------------- constraints


def test_parser_detects_constraints_in_instruction_text():
    found = lambda text: {(s["type"], tuple(sorted(s["params"].items()))) for s in parse_constraints(text)}  # noqa: E731
    assert found("Summarise the article in 50 words or fewer.") == {("word_count", (("n", 50), ("relation", "at_most")))}
    assert found("Give exactly 3 bullet points on sleep hygiene.") == {("bullet_count", (("n", 3),))}
    assert found("List the planets. Respond in JSON.") == {("json_format", ())}
    assert found("Describe Paris without using any commas.") == {("no_commas", ())}
    assert found('Write a toast. End your response with "Cheers!"') == {("end_with", (("phrase", "Cheers!"),))}
    assert found("Explain entropy in one sentence.") == {("sentence_count", (("n", 1), ("relation", "at_most")))}
    # the data a program handles is not a constraint on the response
    assert found("If the input string has less than three words, return it unchanged.") == set()
    assert found("Convert this XML document to JSON.") == set()
    assert found("Write a function that converts a string to lowercase.") == set()


def test_format_score_checks_attached_and_detected_constraints():
    r = Record(instruction="Describe the Moon in at most 10 words.", output="The Moon is Earth's only natural satellite.",
               meta={"constraints": [make_spec("no_commas")]})
    assert format_score(r, r.output) == (1.0, None)
    long = "The Moon, our only natural satellite, shapes tides, stabilises Earth's tilt and lights the night."
    score, detail = format_score(r, long)
    assert score == 0.0 and "no_commas" in detail and "word_count" in detail
    broken = r.model_copy(update={"meta": {"constraints": [{"type": "no_such_type", "params": {}}]}})
    score, detail = format_score(broken, "fine")
    assert score < 1.0 and "no_such_type" in detail


# ---------------------------------------------------------------- embeddings: coherence, alignment, reference


@pytest.fixture(scope="module")
def seeds() -> list[Record]:
    from dataforge.io import read_records

    return list(read_records(EXAMPLES / "seeds.jsonl"))


def test_coherence_and_alignment_separate_real_from_swapped(seeds):
    rules = load_rules()
    emb = get_embedder()
    pool = [r.prompt_text for r in seeds]
    checker = Checker(rules, emb, pool_prompts=pool + [GSM, CODE_Q], reference=seeds[:5])
    real = [Record(instruction=GSM, output=GSM_ANSWER), Record(instruction=CODE_Q, output=CODE_A)]
    swapped = [Record(instruction=GSM, output=CODE_A), Record(instruction=CODE_Q, output=GSM_ANSWER)]
    s_real = asyncio.run(checker.score(real))
    s_swap = asyncio.run(checker.score(swapped))
    for a, b in zip(s_real, s_swap):
        assert a.scores["coherence"] > b.scores["coherence"] + 0.3
        assert a.scores["alignment_emb"] > b.scores["alignment_emb"]
        assert 0.0 <= a.scores["reference"] <= 1.0
        assert decide(a.scores, rules)[0] == "accepted"
        status, reasons = decide(b.scores, rules)
        assert status == "review" and any(x.startswith("coherence") for x in reasons)


def test_short_answers_skip_embedding_similarity(seeds):
    checker = Checker(load_rules(), get_embedder(), pool_prompts=[r.prompt_text for r in seeds])
    (sc,) = asyncio.run(checker.score([Record(instruction="Is this email spam? Output true or false.",
                                              input="WIN A FREE CRUISE!!! Click now", output="true")]))
    assert "coherence" not in sc.scores and "alignment_emb" not in sc.scores
    assert sc.scores["structure"] == 1.0


# ---------------------------------------------------------------- complexity, rules, domains, judges


def test_complexity_grows_with_constraints_reasoning_and_depth():
    plain = Record(instruction="What is the capital of France?")
    evolved = Record(instruction=("Compare three sorting algorithms step by step, analyze their trade-offs for "
                                  "nearly sorted input of 10000 items, justify which one you would choose, and "
                                  "answer in at most 150 words without using any commas."),
                     lineage=Lineage(round=3))
    lo, hi = complexity_features(plain, 0), complexity_features(evolved, 2)
    assert lo >= 1.0 and lo < 3.0 and hi > lo + 4 and hi <= 10.0
    rules = load_rules(overrides={"checks": {"complexity": {"max": 6.0}}})
    status, reasons = decide({"complexity": hi}, rules)
    assert status == "rejected" and reasons[0].startswith("complexity")


def test_rules_yaml_overrides_and_errors(tmp_path):
    cfg = tmp_path / "gate.yaml"
    cfg.write_text("checks:\n  coherence: {min: 0.6, on_fail: reject}\nrefine: {rounds: 0}\n")
    rules = load_rules(cfg)
    assert rules.checks["coherence"].min == 0.6 and rules.checks["format"].min == 1.0  # others keep defaults
    assert decide({"coherence": 0.5}, rules)[0] == "rejected"
    assert rules.refine.rounds == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  coherence: {minimum: 0.6}\n")
    with pytest.raises(DataforgeError, match="bad.yaml"):
        load_rules(bad)
    with pytest.raises(DataforgeError, match="not found"):
        load_rules(tmp_path / "missing.yaml")


def test_high_stakes_domains_detected():
    d = DomainDetector(load_rules().high_stakes)
    assert d.detect("What dosage of this medication is safe for a patient with diabetes?") == ["health"]
    assert d.detect("Should I invest my retirement savings in a stock market index fund?") == ["finance"]
    assert d.detect("My landlord started an eviction; do I need a lawyer to go to court?") == ["law"]
    assert d.detect(GSM + GSM_ANSWER) == []


def test_judge_answers_are_read_from_logprobs_or_text():
    lp = [{"yes": -0.2, "no": -1.8, "maybe": -3.0}]
    p = yes_probability("yes", lp)
    assert 0.8 < p < 0.85
    assert yes_probability("No, it does not.", None) == 0.0
    assert yes_probability("Yes.", None) == 1.0
    assert yes_probability("I think so", None) is None
    assert parse_score(json.dumps({"score": 7})) == 7.0
    assert parse_score("Complexity: 12") == 10.0
    assert parse_score("no idea") is None


@pytest.mark.parametrize("name", ["judge_alignment", "judge_contradiction", "judge_complexity", "critique", "refine"])
@pytest.mark.parametrize("profile", ["chat", "fewshot"])
def test_gate_templates_render_in_both_profiles(name, profile):
    from dataforge.prompts import render

    tricky = "Summarise {{ secret }} in 10 words."
    p = render(name, profile, instruction=tricky, input="some input", response="A draft answer.",
               problems=["format: 14 words, wanted at most 10"], critique="Too long.")
    assert p.profile == profile and p.template_id == f"{name}.{profile}" and len(p.hash) == 12
    assert "{{ secret }}" in p.text  # data is never evaluated as a template
    if name != "judge_complexity":
        assert "A draft answer." in p.text
