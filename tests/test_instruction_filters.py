"""Each Self-Instruct filter rejects what it should (with its reason) and lets the near-misses through."""

from __future__ import annotations

import pytest

from dataforge.generate.instruction_filters import (DEFAULT_BLACKLIST, FilterConfig, InstructionFilter,
                                                    normalize_instruction)


def reason(text: str, **cfg) -> str | None:
    return InstructionFilter(FilterConfig(**cfg))(text).reason


@pytest.mark.parametrize("text,expected", [
    ("Name three colors", "too_short"),  # 3 words: needs more than 3
    ("Name three primary colors.", None),
    (" ".join(["word"] * 151), "too_long"),
    ("Summarize: " + " ".join(f"w{i}" for i in range(149)), None),  # exactly 150 words
    ("", "empty"),
])
def test_length(text, expected):
    assert reason(text) == expected


@pytest.mark.parametrize("text,hit", [
    ("Describe the image below in detail.", "image"),
    ("Plot the monthly sales for this year.", "plot"),
    ("Please GO TO the website and check it.", "go to"),
    ("Compose some music for a rainy evening.", "music"),
    ("Explain the flowchart of this process.", "flowchart"),
    ("Open these files and count the words.", "files"),
])
def test_blacklist_hits_whole_words_case_insensitively(text, hit):
    f = InstructionFilter()
    v = f(text)
    assert (v.kept, v.reason, v.detail) == (False, "blacklisted_keyword", hit)


@pytest.mark.parametrize("text", [
    "Imagine a city where cars are banned.",  # 'imag-ine' is not 'image'
    "Explain the mapping between keys and values.",  # 'map' only inside a word
    "Describe how you would organise a filing cabinet.",
    "Tell me how to get to the nearest post office.",  # 'go to' absent
    "Summarise the storyline of your favourite novel.",
])
def test_blacklist_near_misses_pass(text):
    assert reason(text) is None


def test_blacklist_is_configurable():
    assert reason("Explain recursion in Python with care.", blacklist=("python",)) == "blacklisted_keyword"
    assert reason("Describe the image below in detail.", blacklist=()) is None
    assert "go to" in DEFAULT_BLACKLIST and "diagram" in DEFAULT_BLACKLIST


def test_write_a_program():
    assert reason("Write a program that prints the first ten primes.") == "write_a_program"
    assert reason("Write a poem about computer programs.") is None
    assert reason("Write a Python function that reverses a string.") is None


@pytest.mark.parametrize("text,expected", [
    ("- List three fruits that are red.", "starts_with_punctuation"),
    ('"Quote your favourite line from a film."', "starts_with_punctuation"),
    ("¿Qué hora es en Madrid ahora mismo?", "starts_with_non_ascii"),
    ("Éxplain why the sky looks blue today.", "starts_with_non_ascii"),
    ("List three fruits that are red.", None),
    ("3 reasons to learn a second language, please.", None),
])
def test_first_character(text, expected):
    assert reason(text) == expected


def test_rouge_novelty_against_seeds_and_pool_sequentially():
    f = InstructionFilter(seeds=["Give three tips for staying healthy."])
    v = f("Give three tips for staying very healthy.")
    assert (v.kept, v.reason, v.detail) == (False, "too_similar", "Give three tips for staying healthy.")
    assert v.score > 0.7
    first = f("Suggest a name for a bakery that sells bread.")
    second = f("Suggest a name for a bakery that sells cakes.")  # similar to the one kept just before
    assert first.kept and not second.kept and second.reason == "too_similar"
    assert f("Compare the climates of Norway and Spain.").kept
    assert f.counts == {"kept": 2, "too_similar": 2}
    assert f.rejected == {"too_similar": 2}


def test_threshold_is_configurable_and_novelty_can_be_off():
    strict = InstructionFilter(FilterConfig(rouge_threshold=0.2), seeds=["Give three tips for staying healthy."])
    assert strict("Give two reasons for eating well daily.").reason == "too_similar"
    off = InstructionFilter(FilterConfig(check_novelty=False), seeds=["Give three tips for staying healthy."])
    assert off("Give three tips for staying healthy.").kept


def test_cheap_rules_run_before_novelty_and_whitespace_is_normalised():
    f = InstructionFilter(seeds=["Draw a picture of a sunny beach."])
    assert f("Draw a picture of a sunny beach.").reason == "blacklisted_keyword"  # not counted as similar
    assert normalize_instruction("  Name   the\n\tplanets  in order. ") == "Name the planets in order."
    assert f("  Name   the\n\tplanets  in order. ").kept
    assert f("Name the planets in order.").reason == "too_similar"  # the normalised text joined the pool
