"""Exact outcomes and explanations of the new checkers, branch by branch (a rejection's detail lands in the
record's reasons, so its wording is part of the contract), and the samplers' ranges."""

from __future__ import annotations

import random

import pytest

from dataforge.constraints import check, compatible_types, make_spec, sample_constraint, still_worded
from dataforge.constraints.combined import _choice_fits, _repeat_fits
from dataforge.constraints.counts import _rel_phrase
from dataforge.constraints.language import _cjk, code_of
from dataforge.errors import DataforgeError

FR = "Nous sommes allés au marché ce matin pour acheter du pain frais."
FR_LONG = ("La ville était calme ce soir-là. Les rues, encore mouillées par la pluie, brillaient sous les lampadaires, "
           "et quelques passants pressés rentraient chez eux sans se parler.")
EN = "This morning we went to the market to buy fresh bread and fruit."
LONG_OPENING = "Certainly, here is a thorough answer to the question you asked. Name a river. Nile."

CASES = [
    ("letter_frequency", {"letter": "q", "relation": "at_least", "n": 2}, "Quiet queen.", True,
     "letter 'q' 2 times, wanted at least 2"),
    ("letter_frequency", {"letter": "Q", "relation": "at_most", "n": 1}, "Quiet queen.", False,
     "letter 'Q' 2 times, wanted at most 1"),
    ("capital_word_frequency", {"relation": "at_least", "n": 2}, "ONE two", False, "1 all-capital word, wanted at least 2"),
    ("capital_word_frequency", {"relation": "exactly", "n": 2}, "ONE TWO", True, "2 all-capital words, wanted exactly 2"),
    ("paragraph_dividers", {"relation": "exactly", "n": 2}, "a\n***\nb\n***\nc", False,
     "3 paragraphs between *** dividers, wanted exactly 2"),
    ("paragraph_dividers", {"relation": "exactly", "n": 2}, "a\n***\n***\nb", False,
     "an empty paragraph between two *** dividers"),
    ("paragraph_dividers", {"relation": "exactly", "n": 1}, "a", True, "1 paragraph between *** dividers, wanted exactly 1"),
    ("first_word", {"paragraphs": 2, "nth": 2, "word": "Then"}, "A.\n\nB.\n\nC.", False, "3 paragraphs, wanted exactly 2"),
    ("first_word", {"nth": 3, "word": "Then"}, "A.\n\nB.", False, "only 2 paragraphs, so there is no paragraph 3"),
    ("first_word", {"nth": 2, "word": "Then"}, "A.\n\nNow b.", False, "paragraph 2 starts with 'Now', wanted 'Then'"),
    ("first_word", {"nth": 2, "word": "Then"}, "A.\n\nThen b.", True, "paragraph 2 starts with 'Then'"),
    ("repeat_prompt", {"request": "Name a river."}, LONG_OPENING, False,
     f"does not open with the request; starts {LONG_OPENING[:40]!r}"),
    ("repeat_prompt", {"request": "Name a river."}, "Name a river.", False, "repeats the request but gives no answer after it"),
    ("repeat_prompt", {"request": "Name a river."}, "Name a river. ?! 'Nile'", True, "opens with the request, then answers"),
    ("repeat_prompt", {"request": "Say: hi;"}, "Say: hi; Hello", True, "opens with the request, then answers"),
    ("two_responses", {}, "one", False, "0 '******' separators, wanted exactly one"),
    ("two_responses", {}, "a ****** b ****** c", False, "2 '******' separators, wanted exactly one"),
    ("two_responses", {}, "a ******", False, "one of the two responses is empty"),
    ("two_responses", {}, "a ****** A", False, "the two responses are the same"),
    ("two_responses", {}, "*a*\n******\n*b*", True, "two different responses"),
    ("two_responses", {}, "same  words ****** same words", False, "the two responses are the same"),
    ("answer_choice", {"options": ["yes", "no"]}, "yes", True, "answered 'yes'"),
    ("answer_choice", {"options": ["yes", "no"]}, "maybe", False, "none of ['yes', 'no'] appears"),
    ("answer_choice", {"options": ["yes", "no"]}, "yes no", False, "several options appear: ['yes', 'no']"),
    ("response_language", {"language": "fr"}, "", False, "no words to identify"),
    ("response_language", {"language": "fr"}, "The dog sleeps.", False,
     "not checked: 3 word(s) are too few to identify the language"),
    ("response_language", {"language": "fr"}, EN, False, "written in English, wanted French"),
    ("response_language", {"language": "fr"}, "1 2 3 4 5 6 7 8 9", False, "written in no known language, wanted French"),
    ("response_language", {"language": "fr"}, f"{FR_LONG} {FR_LONG}\n\n{EN}", False,
     f"a paragraph is in English: {EN[:40]!r}"),
    ("response_language", {"language": "fr"}, FR, True, "written in French"),
    ("char_count", {"relation": "at_most", "n": 3}, " abcd ", False, "4 characters, wanted at most 3"),
    ("sections", {"n": 2, "marker": "PART"}, "PART 1\nx", False, "1 PART N line, wanted exactly 2"),
    ("sections", {"n": 2}, "# a\n# b\n# c", False, "3 header lines, wanted exactly 2"),
]


@pytest.mark.parametrize("type_name,params,response,ok,detail", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_outcome_and_detail(type_name, params, response, ok, detail):
    res = check(make_spec(type_name, **params), response)
    assert (res.ok, res.detail, res.type) == (ok, detail, type_name)


@pytest.mark.parametrize("type_name,params,message", [
    ("letter_frequency", {"letter": "ab", "relation": "at_least", "n": 1}, "letter must be a single letter, got 'ab'"),
    ("letter_frequency", {"letter": "7", "relation": "at_least", "n": 1}, "letter must be a single letter, got '7'"),
    ("first_word", {"nth": 0, "word": "x"}, "nth must be 1 or more, got 0"),
    ("repeat_prompt", {"request": " . "}, "the request to repeat is empty"),
    ("answer_choice", {"options": ["one"]}, "a choice needs at least two options"),
    ("response_language", {"language": "xx"}, "unknown language code 'xx'"),
])
def test_bad_params_are_refused_with_the_reason(type_name, params, message):
    with pytest.raises(DataforgeError) as exc:
        check({"type": type_name, "params": params}, "some text")
    assert str(exc.value) == f"constraint {type_name!r}: bad params {params!r} ({message})"


def test_samplers_cover_their_ranges_and_nothing_else():
    def draws(t, ins="Describe a river.", k=400):
        rng = random.Random(0)
        return [sample_constraint(rng, ins, types=[t])["params"] for _ in range(k)]

    letters = draws("letter_frequency")
    assert {(p["relation"], p["letter"] in "etaoinsrhl") for p in letters} == {("at_least", True), ("at_most", False)}
    assert {p["n"] for p in letters if p["relation"] == "at_least"} == set(range(5, 16))
    assert {p["n"] for p in letters if p["relation"] == "at_most"} == {1, 2, 3}
    caps = draws("capital_word_frequency")
    assert {p["n"] for p in caps if p["relation"] == "at_least"} == set(range(2, 7))
    assert {p["n"] for p in caps if p["relation"] == "at_most"} == {1, 2, 3, 4}
    assert {(p["relation"], p["n"]) for p in draws("paragraph_dividers")} == {("exactly", n) for n in range(2, 6)}
    fw = draws("first_word")
    assert {p["paragraphs"] for p in fw} == {2, 3, 4} and all(1 <= p["nth"] <= p["paragraphs"] for p in fw)
    assert {p["word"] for p in fw if p["nth"] == 1} <= {"Imagine", "Today", "Consider", "Picture", "Historically"}
    assert {p["word"] for p in fw if p["nth"] > 1} >= {"However", "Finally"}
    assert {p["n"] for p in draws("char_count")} == {140, 200, 280, 500, 300, 800}
    assert {p["request"] for p in draws("repeat_prompt", "  Name a river.  ", 5)} == {"Name a river."}
    assert len({tuple(p["options"]) for p in draws("answer_choice", "Is it wet?")}) == 4
    assert {p["language"] for p in draws("response_language")} == {"fr", "de", "es", "it", "pt", "hi", "ru", "ja", "ko",
                                                                  "zh", "ar", "tr", "nl"}


def test_relation_words_in_phrases():
    assert [_rel_phrase(r) for r in ("at_most", "at_least", "exactly", "around")] == \
        ["no more than", "at least", "exactly", "about"]


def test_which_instructions_a_type_fits():
    assert _repeat_fits(" ".join(["w"] * 80)) and not _repeat_fits(" ".join(["w"] * 81))
    assert not _repeat_fits("Line one.\nLine two.") and _repeat_fits("One line.\n") and not _repeat_fits("") \
        and not _repeat_fits(None)
    assert _choice_fits("Rivers flood. Is the Rhine long?") and _choice_fits("Can fish fly?")
    assert not _choice_fits("Is the Rhine long? Describe it.") and not _choice_fits("What is a river?")
    assert not _choice_fits("Is the Rhine long.") and not _choice_fits("") and not _choice_fits(None)
    assert not _choice_fits("Rivers? Describe them?")
    assert "answer_choice" not in compatible_types(instruction="Describe a river.")


def test_cjk_is_judged_by_length():
    assert _cjk("猫" * 16) and not _cjk("猫" * 15) and _cjk("가" * 16) and not _cjk("a" * 40)
    assert _cjk("ぁ" * 8 + "鿿" * 8) and _cjk("가" * 8 + "힯" * 8) and not _cjk("〿" * 16)
    assert check(make_spec("response_language", language="zh"), "猫坐在垫子上很长时间看着窗外我们").ok


def test_language_names_and_aliases():
    assert code_of("French") == "fr" and code_of(" hindi ") == "hi" and code_of("Farsi") == "fa"
    assert code_of("Mandarin") == "zh" and code_of("Klingon") is None


def test_still_worded_needs_the_phrase_and_an_unchanged_request():
    spec = make_spec("no_commas")
    assert still_worded(spec, f"Describe X. {spec['phrase']}") and not still_worded(spec, "Describe X.")
    assert not still_worded({"type": "no_commas", "params": {}}, "anything")
    rep = make_spec("repeat_prompt", request="Name  a river:")
    assert still_worded(rep, f"Name a river. {rep['phrase']}")
    assert not still_worded(rep, f"Name a lake. {rep['phrase']}")
