"""The four Evol-Instruct elimination rules, each with cases that must fail and cases that must pass.
The model judge runs against the real loopback HTTP server; the fallback uses the real MiniLM."""

from __future__ import annotations

import asyncio

import pytest

from dataforge.generate.elimination import (COPIED_PROMPT, EMPTY, NO_INFO_GAIN, SORRY_SHORT, STOPWORDS_ONLY,
                                            EliminationConfig, Eliminator, copied_marker, default_embedder_factory,
                                            is_sorry_short, is_stopwords_only, is_unchanged, load_markers,
                                            parse_verdict)
from dataforge.prompts import default_library


# ---------------------------------------------------------------- rule 2: sorry and short

@pytest.mark.parametrize("text", ["Sorry, I cannot help with that.", "I'm SORRY but this is too hard for me.",
                                  "sorry"])
def test_sorry_short_fails(text):
    assert is_sorry_short(text)
    assert Eliminator().check_response(text).reason == SORRY_SHORT


@pytest.mark.parametrize("text", [
    "Here is the plan: first measure, then cut.",  # no sorry
    "Sorry " + " ".join(["word"] * 85),  # sorry, but a long real answer
])
def test_sorry_short_passes(text):
    assert not is_sorry_short(text)
    assert Eliminator().check_response(text).ok


def test_sorry_threshold_is_configurable():
    text = "Sorry, " + " ".join(["detail"] * 20)
    assert is_sorry_short(text, 80) and not is_sorry_short(text, 10)


# ---------------------------------------------------------------- rule 3: punctuation and stop words

@pytest.mark.parametrize("text", ["", "   ", "...!?", "It is what it is.", "the, of, and; to."])
def test_stopwords_only_fails(text):
    assert is_stopwords_only(text)
    assert Eliminator().check_response(text).reason == STOPWORDS_ONLY


@pytest.mark.parametrize("text", ["It is blue.", "42 apples", "Paris."])
def test_stopwords_only_passes(text):
    assert not is_stopwords_only(text)


# ---------------------------------------------------------------- rule 4: copied the evolving prompt

@pytest.mark.parametrize("text", [
    "#Rewritten Prompt#: Name three tropical fruits.",
    "Here is the rewritten prompt that asks for three fruits.",
    "As in the GIVEN PROMPT, list three fruits with their colours.",
    "#Given Prompt# Name three fruits",
    "Harder task: name three fruits and their origin",
])
def test_copied_prompt_fails(text):
    assert copied_marker(text) is not None
    assert Eliminator().check_instruction(text).reason == COPIED_PROMPT


@pytest.mark.parametrize("text", ["Name three tropical fruits and compare their vitamin C content.",
                                  "Write a prompt for an image generator that shows a lighthouse at dusk."])
def test_copied_prompt_passes(text):
    assert copied_marker(text) is None
    assert Eliminator().check_instruction(text).ok


def test_markers_live_in_a_data_file_and_cover_every_fewshot_label():
    markers = load_markers()
    assert "#given prompt#" in markers and "rewritten prompt" in markers
    # every label a shipped evol few-shot template ends with must be a marker, or leaks go unseen
    lib = default_library()
    for name in lib.names():
        if name.startswith("evol_"):
            tpl = lib.template(name, "fewshot")
            last = tpl.source.rstrip().splitlines()[-1].strip()
            if last.endswith(":"):
                assert last.lower() in markers, f"{name}: label {last!r} missing from the markers file"


def test_empty_evolution():
    assert Eliminator().check_instruction("  ").reason == EMPTY
    assert Eliminator().check_instruction("Fruits?").reason == EMPTY


# ---------------------------------------------------------------- rule 1: no information gain

def test_unchanged_and_verdict_parsing():
    assert is_unchanged("Name three fruits.", "name three   fruits")
    assert not is_unchanged("Name three fruits.", "Name three red fruits.")
    assert parse_verdict("EQUAL") is False and parse_verdict("Not equal.") is True
    assert parse_verdict("DIFFERENT") is True and parse_verdict(" equal") is False
    assert parse_verdict("maybe?") is None


def test_a_shortened_parent_has_no_gain_without_any_judge():
    from dataforge.generate.elimination import adds_no_words

    parent = "Answer the following math problem. You should write down the reasoning steps."
    assert adds_no_words(parent, "Answer the following math problem.")
    assert not adds_no_words(parent, "Answer the following math problem about trains.")
    elim = Eliminator(EliminationConfig(judge="off"))
    v = asyncio.run(elim.check_info_gain(parent, "Answer the following math problem."))
    assert v.reason == NO_INFO_GAIN and v.how == "no new words"


def test_identical_instruction_has_no_gain_without_any_judge():
    elim = Eliminator(EliminationConfig(judge="off"))
    v = asyncio.run(elim.check_info_gain("Name three fruits.", "Name three fruits!"))
    assert v.reason == NO_INFO_GAIN and v.how == "identical"
    assert asyncio.run(elim.check_info_gain("Name three fruits.", "Name three red fruits.")).ok


@pytest.mark.slow  # the real MiniLM decides the fallback; fast tests below pin each branch
def test_model_judge_over_http_with_embedding_fallback(tmp_path):
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.testing.loopback import LoopbackServer

    def responder(body):
        text = body["messages"][-1]["content"]
        if "vitamin" in text:
            return "DIFFERENT"
        if "ocean" in text:
            return "EQUAL"
        return "I cannot say."  # unreadable verdict -> the embedding decides

    with LoopbackServer(responder) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True,
                                     profile="chat"))
        elim = Eliminator(EliminationConfig(judge="model"), llm=llm,
                          embedder_factory=default_embedder_factory(str(tmp_path)))
        assert elim.judge_mode == "model"

        async def run():
            gain = await elim.check_info_gain("Name three fruits.", "Name three fruits rich in vitamin C.")
            same = await elim.check_info_gain("Write a poem about the sea.", "Write a poem about the ocean.")
            para = await elim.check_info_gain("List three fruits.", "List three fruits please.")
            other = await elim.check_info_gain("List three fruits.", "Explain how tides form on Earth.")
            await llm.aclose()
            return gain, same, para, other

        gain, same, para, other = asyncio.run(run())
        assert len(srv.requests) == 4
    assert gain.ok and gain.how == "model"
    assert same.reason == NO_INFO_GAIN and same.how == "model"
    assert para.how == "embedding" and para.reason == NO_INFO_GAIN and para.score >= 0.96
    assert other.how == "embedding" and other.ok and other.score < 0.5


def test_auto_judge_uses_embeddings_for_fewshot_models():
    class Small:
        profile = "fewshot"

    assert Eliminator(llm=Small()).judge_mode == "embedding"
    assert Eliminator().judge_mode == "embedding"


def test_copied_words_of_a_fewshot_example_fail_rule_4():
    from dataforge.generate.elimination import copied_prompt_words
    from dataforge.prompts import render

    parent = "What is the relation between the given pairs?"
    prompt = render("evol_complicate_input", "fewshot", prompt=parent).text
    pasted = 'What is the relation between the pairs? {"name": "Ana Ruiz", "job": "nurse", "city": "Valencia"}'
    assert copied_prompt_words(pasted, prompt, parent) is not None
    v = Eliminator().check_instruction(pasted, prompt, parent)
    assert v.reason == COPIED_PROMPT and "ana ruiz" in v.how
    # the parent's own words repeated are not copying, nor is new data
    own = "What is the relation between the given pairs? Use these pairs: hot : cold, up : down."
    assert Eliminator().check_instruction(own, prompt, parent).ok
    assert Eliminator(EliminationConfig(copy_ngram=0)).check_instruction(pasted, prompt, parent).ok
