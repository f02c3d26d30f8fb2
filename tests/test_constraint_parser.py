"""The constraint parser on the labelled set (per-type recall and precision), on the ways people write
constraints (relations, number words, placement), on text that only mentions constraints, and on the
library's own phrasings. (End to end through the gate: test_constraint_gate.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from dataforge.quality.constraint_context import to_int
from dataforge.quality.constraint_parser import parse_constraints
from dataforge.quality.constraint_scoring import load_labelled, score_detector, spec_key

LABELLED = Path(__file__).parent / "data" / "constraint_instructions.jsonl"


def found(text: str) -> set:
    return {spec_key(s) for s in parse_constraints(text)}


def keys(*pairs) -> set:
    return {spec_key(p) for p in pairs}


def test_labelled_set_recall_and_precision_per_type():
    rows = load_labelled(LABELLED)
    assert len(rows) >= 300 and len({r["instruction"] for r in rows}) == len(rows)
    assert sum(1 for r in rows if not r["constraints"]) >= 50  # negatives
    score = score_detector(rows, parse_constraints)
    from dataforge.constraints import CONSTRAINTS

    assert set(score.types()) == set(CONSTRAINTS)  # every library type is labelled somewhere
    low = [(t, round(score.recall(t), 2), round(score.precision(t), 2)) for t in score.types()
           if score.recall(t) < 0.9 or score.precision(t) < 0.95]
    assert not low, (low, score.errors)


@pytest.mark.parametrize("text,relation,n", [
    ("Answer in less than 100 words.", "at_most", 99),
    ("Use fewer than fifty words.", "at_most", 49),
    ("Keep it under twenty words.", "at_most", 19),
    ("Reply in <20 words.", "at_most", 19),
    ("No more than 60 words, please.", "at_most", 60),
    ("Your reply: 45 words max.", "at_most", 45),
    ("Answer in 30 words or less.", "at_most", 30),
    ("Use at least 150 words.", "at_least", 150),
    ("Write more than two hundred words.", "at_least", 201),
    ("Use 100 words or more.", "at_least", 100),
    ("Describe owls; a ten-word ceiling.", "at_most", 10),
    ("Write exactly 25 words.", "exactly", 25),
    ("Write around 200 words.", "around", 200),
    ("Give me a 500-word essay on tides.", "around", 500),
    ("Write approximately two hundred and fifty words.", "around", 250),
])
def test_relations_and_number_words(text, relation, n):
    assert found(text) == keys(("word_count", {"relation": relation, "n": n}))


def test_ranges_and_second_bounds():
    both = keys(("word_count", {"relation": "at_least", "n": 80}), ("word_count", {"relation": "at_most", "n": 120}))
    assert found("Write 80-120 words about owls.") == both
    assert found("Write between 80 and 120 words about owls.") == both
    assert found("Use no more than 120 words and no fewer than 80.") == both
    assert found("Describe owls in two to three sentences.") == keys(
        ("sentence_count", {"relation": "at_least", "n": 2}), ("sentence_count", {"relation": "at_most", "n": 3}))


def test_number_words():
    assert [to_int(w) for w in ("twenty-five", "a hundred", "two hundred and fifty", "twice", "1,200")] == \
        [25, 100, 250, 2, 1200]


@pytest.mark.parametrize("text", [
    "Answer in at most 40 words. Explain black holes.",                  # before the task
    "Explain black holes. Answer in at most 40 words.",                  # after it, a separate sentence
    "Explain black holes (answer in at most 40 words).",                 # an aside
    "EXPLAIN BLACK HOLES. ANSWER IN AT MOST FORTY WORDS.",               # capitals, a number word
    "Explain black holes.\nP.S. answer in at most 40 words please",      # a P.S.-style aside
    "Requirements:\n- at most 40 words\n- plain English\nTask: explain black holes.",  # a list of requirements
])
def test_placements(text):
    assert ("word_count", spec_key(("word_count", {"relation": "at_most", "n": 40}))[1]) in found(text)


@pytest.mark.parametrize("text", [
    "If the input has fewer than 3 words, return it unchanged.",
    "Write a function that returns True if a string contains at least 5 words.",
    'The teacher said "answer in fewer than 50 words" but I wrote 80. Will I lose marks?',
    "Generate a list of sentences, each with at most 10 words.",
    "Why do people write in all caps online?",
    "Describe a character who never uses commas when texting.",
    "Give me feedback on my 200-word story.",
    "Translate this paragraph from German into English.",
    "List some words that begin with \"pre\".",
    "Convert this XML document to JSON.",
    # shapes seen in real instruction data (word problems, coding and tool tasks)
    "Lena can type 70 words per minute. Her speed drops by 15 words per minute. How long does a 900 word letter take?",
    "In Grade 5, there are two sections of 30 students. How many students are there in all?",
    "Write Python code that prints the first 3 characters of every item in a list.",
    "Generate a random password of 8 characters with one digit.",
    "Which of these is not a valid JSON data type: 'undefined' or 'null'?",
    "Show the files of a folder using the 'ls' command.",
    "Convert the following string to all lowercase letters using JavaScript.",
    "Compare the meaning of the two sentences and say whether they match.",
])
def test_text_that_only_mentions_a_constraint_sets_none(text):
    assert found(text) == set()


def test_parser_reads_every_phrasing_the_library_writes():
    """Evolved instructions reach the gate with their specs, but a copy without meta (exported, converted)
    must still be checked: the parser finds each spec from its phrase alone, and nothing else."""
    import random

    from dataforge.constraints import CONSTRAINTS, sample_constraint
    from dataforge.generate.evolve import append_phrase

    rng = random.Random(0)
    english = spec_key(("response_language", {"language": "en"}))  # "in English capital letters" also says English
    for t in sorted(CONSTRAINTS):
        ins = "Is the Rhine longer than the Danube?" if t == "answer_choice" else "Describe how glaciers shape valleys."
        for _ in range(25):
            s = sample_constraint(rng, ins, types=[t])
            got = {spec_key(x) for x in parse_constraints(append_phrase(ins, s["phrase"]))} - {english}
            assert got == {spec_key(s)}, (s["phrase"], got)
