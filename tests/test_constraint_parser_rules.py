"""The parser's rules one by one: how a count's relation is read, which contexts leave a mention out,
and the helpers for numbers, sentences and clauses."""

from __future__ import annotations

import pytest

from dataforge.quality.constraint_context import (about_the_response, clause_start, in_narrative, in_question,
                                                  in_quotes, postfix_relation, sentence_at, to_int)
from dataforge.quality.constraint_parser import parse_constraints
from dataforge.quality.constraint_scoring import spec_key


def found(text: str) -> set:
    return {spec_key(s) for s in parse_constraints(text)}


def one(t: str, **p) -> set:
    return {spec_key((t, p))}


@pytest.mark.parametrize("text,expected", [
    ("Write a 100 word essay on tides.", one("word_count", relation="around", n=100)),
    ("Answer in 100 words.", one("word_count", relation="at_most", n=100)),
    ("Answer in a single word.", one("word_count", relation="at_most", n=1)),
    ("Write a one-word answer.", one("word_count", relation="at_most", n=1)),
    ("Tweet it: a 200-character limit.", one("char_count", relation="at_most", n=200)),
    ("Write 200 characters about tea.", one("char_count", relation="at_most", n=200)),
    ("Write a 3-paragraph story.", one("paragraph_count", relation="exactly", n=3)),
    ("Write a one-paragraph story.", one("paragraph_count", relation="at_most", n=1)),
    ("Write 4 sentences.", one("sentence_count", relation="exactly", n=4)),
    ("Answer in 5-5 sentences.", set()),                      # not a range: nothing we can state
    ("Answer in 3 or 4 sentences.", one("sentence_count", relation="at_least", n=3)
     | one("sentence_count", relation="at_most", n=4)),
    ("Use fewer than one word.", one("word_count", relation="at_most", n=0)),
    ("Answer in 50 WORDS MAX.", one("word_count", relation="at_most", n=50)),
    ("Answer in 50 words (max).", one("word_count", relation="at_most", n=50)),
    ("Use a hundred and five words or more.", one("word_count", relation="at_least", n=105)),
    ("Keep it between 10 and 20 words, and no more than 2 sentences.",
     one("word_count", relation="at_least", n=10) | one("word_count", relation="at_most", n=20)
     | one("sentence_count", relation="at_most", n=2)),
    ("Use at most 80 words and at least 40.", one("word_count", relation="at_most", n=80)
     | one("word_count", relation="at_least", n=40)),
    ("Use at most 80 words, and fewer than 40 sentences.", one("word_count", relation="at_most", n=80)
     | one("sentence_count", relation="at_most", n=39)),
    ("Answer in at most 30 words. Answer in at most 30 words.", one("word_count", relation="at_most", n=30)),
])
def test_count_relations(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Write 3 paragraphs. Paragraph 2 must start with the word Next.", one("first_word", paragraphs=3, nth=2, word="Next")),
    ("Write 3 paragraphs; the 2nd paragraph should begin with \"So\".", one("first_word", paragraphs=3, nth=2, word="So")),
    ("Write at least 3 paragraphs; the second paragraph must start with So.",
     one("first_word", nth=2, word="So")),
    ("Write 4 paragraphs separated by ***.", one("paragraph_dividers", relation="exactly", n=4)),
    ("Tell it in 3 parts separated by ***.", one("paragraph_dividers", relation="exactly", n=3)),
    ("Write 2 paragraphs, not 3 parts, separated by ***.", one("paragraph_dividers", relation="exactly", n=2)),
    ("Tell it in 3 parts.", set()),
    ("Use 3 sections, each with a markdown heading.", one("sections", n=3)),
    ("Use 3 sections. Begin each section with the header Part 1, Part 2.", one("sections", n=3, marker="Part")),
    ("Use 3 sections, starting each with a Markdown header.", one("sections", n=3)),
    ("Use at most 3 sections.", set()),                      # sections are counted exactly, or not at all
    ("Use at least 3 bullet points.", set()),
    ("Give it as a numbered list of 4 steps.", one("bullet_count", n=4)),
    ("Give a 3-item bulleted list.", one("bullet_count", n=3)),
])
def test_shapes_of_counts(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text", [
    "Create a user name that is at most 12 characters long.",
    "The first 3 words of the title matter most.",
    "Print the last 2 sentences of the file.",
    "Copy the two paragraphs below.",
    "Write one sentence for each of the pictures.",
    "Mike reads 20 pages a day. How many days does a 200 page book take?",
    "Use 'at least 50 words' as the label text.",
])
def test_counts_about_something_else(text):
    assert found(text) == set()


def test_a_response_subject_keeps_a_count_inside_a_coding_task():
    assert found("Write a function to sort a list. Your answer must be at most 60 words.") == \
        one("word_count", relation="at_most", n=60)
    assert found('Say "function" once. Answer in at most 60 words.') == one("word_count", relation="at_most", n=60)


def test_has_have_must_have():
    assert found("Your essay must have 3 paragraphs.") == one("paragraph_count", relation="exactly", n=3)
    assert found("The essay has 3 paragraphs. Shorten it.") == set()
    assert found("It has to have 3 paragraphs.") == one("paragraph_count", relation="exactly", n=3)


def test_cue_words_only_count_close_before():
    # a cue word within six words before the count, in the same comma-separated part, leaves it out
    assert found("Keep only the lines if they hold at most 40 words.") == set()
    assert found("If the topic is hard then please write everything down in at most 40 words.") == \
        one("word_count", relation="at_most", n=40)
    assert found("If you like, write it all down in at most 40 words.") == one("word_count", relation="at_most", n=40)


def test_sentences_clauses_and_quotes():
    t = "One. Two? Three!\nFour"
    assert sentence_at(t, 6) == (4, 9) and sentence_at(t, 0) == (0, 4) and sentence_at(t, 19) == (17, 21)
    assert clause_start("a; b (c d", 8) == 6 and clause_start("a; b ( c", 7) == 6 and clause_start("a; b c", 5) == 2 and clause_start("abc", 2) == 0 and clause_start("x.y", 2) == 0
    assert in_quotes('say "hi there" now', 6) and not in_quotes('say "hi" now', 3) and not in_quotes('say "hi" now', 8)
    assert in_question("Why is it so? Answer.", 3) and not in_question("Why is it so? Answer.", 15)
    assert not in_question("Describe it (max 5 words): why?", 14)
    assert in_question("If he types 10 words, how long does it take?", 12)
    assert not in_question("Answer in 10 words: why?", 10) and not in_question("Could you answer in French?", 10)
    assert not in_question("Explain it", 3)
    assert in_narrative("Tom writes 10 words. How many?", 5) and not in_narrative("Tom writes 10 words.", 5)
    assert not in_narrative("You write 10 words. How many?", 5) and not in_narrative("Write 10 words. Why?", 5)
    assert not in_narrative("Tom writes. How many words?", 15)


def test_about_the_response_contexts():
    assert about_the_response("Answer in 5 words.", 10)
    assert not about_the_response('He said "answer in 5 words".', 10)
    assert not about_the_response("A tweet must be under 280 characters.", 16)
    assert not about_the_response("There are 3 sections.", 10)


def test_numbers_and_postfix_relations():
    assert [to_int(x) for x in ("a hundred and five", "two hundred", "twenty-one", "1,000", "zero", "a dozen")] == \
        [105, 200, 21, 1000, 0, 12]
    with pytest.raises(ValueError, match="not a number: 'lots'"):
        to_int("lots")
    assert postfix_relation(" MAX") == "at_most" and postfix_relation(", or more") == "at_least"
    assert postfix_relation(" (minimum)") == "at_least" and postfix_relation(" about") is None


def test_parser_specs_carry_their_phrase():
    (spec,) = parse_constraints("Answer in at most 12 words.")
    assert spec["phrase"] == "Answer in at most 12 words."
