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
from vector_helpers import FixedVectors


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


# ---------------------------------------------------------------- each rule at its bounds (fast, no real model)


def _unit_pair(cos: float):
    import math

    return [1.0, 0.0], [cos, math.sqrt(max(0.0, 1.0 - cos * cos))]  # two unit vectors with this cosine


def test_sorry_short_at_the_word_limit():
    at = "Sorry " + " ".join(["word"] * 78)  # 79 words: short
    assert is_sorry_short(at) and not is_sorry_short(at + " more")  # 80 words: not short
    assert is_sorry_short("so SORRY about it", max_words=5) and not is_sorry_short("so sorry about it", max_words=4)
    assert not is_sorry_short("A sorrowful tale.") and not is_sorry_short("")
    elim = Eliminator(EliminationConfig(sorry_max_words=4))
    assert elim.check_response("Sorry, cannot do.").reason == SORRY_SHORT
    assert elim.check_response("Sorry, I cannot do that.").ok


def test_stopwords_rule_comes_before_sorry_and_counts_words_only():
    assert Eliminator().check_response("I am not. — !").reason == STOPWORDS_ONLY
    assert Eliminator().check_response("THE END").ok is True  # 'end' is a content word
    assert is_stopwords_only("Oh, well... OK!") and not is_stopwords_only("Oh well, sorry.")
    assert Eliminator().check_response("Oh well, sorry.").reason == SORRY_SHORT


def test_empty_evolution_at_the_word_minimum():
    elim = Eliminator(EliminationConfig(min_instruction_words=3))
    assert elim.check_instruction("Name fruits.").reason == EMPTY
    assert elim.check_instruction("Name three fruits.").ok
    assert elim.check_instruction("Name — fruits.").reason == EMPTY  # a dash is no word
    v = Eliminator(EliminationConfig(min_instruction_words=1)).check_instruction("Fruits?")
    assert v.ok and v.reason is None and v.how == ""


def test_copied_words_at_the_ngram_length():
    from dataforge.generate.elimination import copied_prompt_words

    prompt = "Rewrite the task so that it asks for one more reasoning step about the data."
    parent = "List three fruits."
    six = "List three fruits and one more reasoning step about apples."  # 'one more reasoning step about' = 5
    assert copied_prompt_words(six, prompt, parent, n=5) == "one more reasoning step about"
    assert copied_prompt_words(six, prompt, parent, n=6) is None
    assert copied_prompt_words("it asks for one more", prompt, parent, n=5) == "it asks for one more"
    # a run the parent shares with the prompt is the parent's own, not copying
    assert copied_prompt_words("rewrite the task so that", prompt, "Rewrite the task so that it rhymes.", n=5) is None
    elim = Eliminator(EliminationConfig(copy_ngram=5))
    v = elim.check_instruction(six, prompt, parent)
    assert v.reason == COPIED_PROMPT and v.how == "copied 'one more reasoning step about'"
    assert elim.check_instruction(six, None, parent).ok  # without the prompt only markers count
    assert Eliminator(EliminationConfig(copy_ngram=6)).check_instruction(six, prompt, parent).ok
    with pytest.raises(ValueError):
        EliminationConfig(copy_ngram=-1)


def test_markers_file_parsing_and_first_match(tmp_path):
    f = tmp_path / "markers.txt"
    f.write_text("# a comment\n#\n\n  #Given Prompt#  \nRewritten PROMPT\n", encoding="utf-8")
    markers = load_markers(str(f))
    assert markers == ("#given prompt#", "rewritten prompt")
    assert copied_marker("the rewritten prompt: #GIVEN PROMPT#", markers) == "#given prompt#"  # file order
    assert copied_marker("nothing here", markers) is None and copied_marker("#given prompt#", ()) is None
    v = Eliminator().check_instruction("Rewritten prompt: list three fruits")
    assert v.reason == COPIED_PROMPT and v.how == "marker 'rewritten prompt'"


def test_verdict_words():
    assert parse_verdict("They are NOT\n equal") is True and parse_verdict("the same") is False
    assert parse_verdict("Different.") is True and parse_verdict("inequality") is None
    assert parse_verdict("") is None and parse_verdict(None) is None  # type: ignore[arg-type]


def test_no_new_words_ignores_stop_words_case_and_numbers():
    from dataforge.generate.elimination import adds_no_words

    assert adds_no_words("List three fruits.", "LIST the FRUITS, 3 of them!")
    assert not adds_no_words("List three fruits.", "List three tropical fruits.")
    assert is_unchanged("List, three fruits!", "list three fruits") and not is_unchanged("a b", "b a")


def test_embedding_threshold_is_inclusive():
    a, b = _unit_pair(0.96)
    emb = FixedVectors({"Name three red fruits.": a, "Name three crimson fruits please.": b})
    elim = Eliminator(EliminationConfig(judge="embedding", similarity_threshold=0.96), embedder_factory=lambda: emb)
    v = asyncio.run(elim.check_info_gain("Name three red fruits.", "Name three crimson fruits please."))
    assert v.reason == NO_INFO_GAIN and v.how == "embedding" and v.score == pytest.approx(0.96) and v.tokens == 0
    emb.vectors["Name three crimson fruits please."] = _unit_pair(0.9599)[1]
    v = asyncio.run(elim.check_info_gain("Name three red fruits.", "Name three crimson fruits please."))
    assert v.ok and v.how == "embedding" and v.score == pytest.approx(0.9599)
    assert emb.calls == 2  # the factory ran once; the embedder is reused
    assert elim.similarity("Name three red fruits.", "Name three red fruits.") == pytest.approx(1.0)


def test_without_any_judge_the_evolution_survives_and_says_so():
    elim = Eliminator(EliminationConfig(judge="embedding"))  # no embedder factory
    v = asyncio.run(elim.check_info_gain("Name three fruits.", "Name three red fruits."))
    assert v.ok and v.how == "no-judge" and v.score is None
    off = asyncio.run(Eliminator(EliminationConfig(judge="off")).check_info_gain("Name fruits.", "Name red fruits."))
    assert off.ok and off.how == "off"


def test_judge_modes():
    class Chat:
        profile = "chat"

    class NoProfile:
        pass

    assert Eliminator(llm=Chat()).judge_mode == "model" and Eliminator(llm=NoProfile()).judge_mode == "model"
    assert Eliminator(EliminationConfig(judge="embedding"), llm=Chat()).judge_mode == "embedding"
    assert Eliminator(EliminationConfig(judge="off"), llm=Chat()).judge_mode == "off"
    assert Eliminator(EliminationConfig(judge="model")).judge_mode == "model"


def test_model_judge_request_verdicts_tokens_and_failures():
    """Over the loopback server: the judge is asked deterministically (temperature 0, 8 tokens, the seed),
    its tokens are counted, an unreadable verdict falls back to the embedding, a failed request too."""
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.testing.loopback import Fault, LoopbackServer, last_user_message

    def responder(body):
        text = last_user_message(body)
        if "vitamin" in text:
            return "DIFFERENT"
        if "ocean" in text:
            return "EQUAL"
        if "tides" in text:
            return Fault("400")
        return "I cannot say."

    pairs = {"List three fruits.": [1.0, 0.0], "List three fruits, ripe ones.": [1.0, 0.0],
             "Explain how tides form.": [0.0, 1.0]}
    with LoopbackServer(responder) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True,
                                     profile="chat", max_retries=0))
        elim = Eliminator(EliminationConfig(judge="auto"), llm=llm, embedder_factory=lambda: FixedVectors(pairs))

        async def run():
            out = [await elim.check_info_gain("Name three fruits.", "Name three fruits rich in vitamin C.", seed=7),
                   await elim.check_info_gain("Write a poem about the sea.", "Write a poem about the ocean."),
                   await elim.check_info_gain("List three fruits.", "List three fruits, ripe ones."),
                   await elim.check_info_gain("List three fruits.", "Explain how tides form.")]
            await llm.aclose()
            return out

        gain, same, unreadable, failed = asyncio.run(run())
        bodies = srv.requests
    assert gain.ok and gain.how == "model" and gain.tokens > 0 and gain.score is None
    assert same.reason == NO_INFO_GAIN and same.how == "model" and same.tokens > 0
    assert unreadable.reason == NO_INFO_GAIN and unreadable.how == "embedding" and unreadable.tokens > 0
    assert failed.ok and failed.how == "embedding" and failed.tokens == 0 and failed.score == pytest.approx(0.0)
    assert len(bodies) == 4
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 8 for b in bodies)
    assert bodies[0]["seed"] == 7 and "seed" not in bodies[1]
    assert "vitamin" in last_user_message(bodies[0]) and "Name three fruits." in last_user_message(bodies[0])


def test_how_each_text_rule_decided():
    assert Eliminator().check_instruction("Fruits?").how == "length"
    assert Eliminator().check_response("It is.").how == "text"
    assert Eliminator().check_response("Sorry, no.").how == "text"


def test_only_full_runs_of_n_words_count_as_copying():
    """The prompt's last words reappearing are no copy when fewer than n (no partial n-grams at the end)."""
    from dataforge.generate.elimination import copied_prompt_words

    prompt = "Make the task harder for the reader of the data"
    tail = "Sum numbers for a reader of the data"  # shares only its last 4 words with the prompt's end
    assert copied_prompt_words(tail, prompt, "", n=5) is None
    assert copied_prompt_words(tail, prompt, "", n=4) == "reader of the data"
    six = "Please answer: make the task harder for the reader now"
    assert copied_prompt_words(six, prompt, "") == "make the task harder for the"
    assert copied_prompt_words("make the task harder for you", prompt, "") is None  # default n = 6: 5 shared


def test_no_gain_case_folding_and_equal_word_sets():
    from dataforge.generate.elimination import adds_no_words

    assert adds_no_words("List three fruits.", "Fruits: list three!")  # the same words, reordered
    assert is_unchanged("NAME THREE FRUITS", "name three fruits")
    assert not is_unchanged("Straße", "STRASSE")  # folded with str.lower, as written


def test_markers_can_be_replaced_on_an_eliminator():
    elim = Eliminator()
    elim.markers = ("zebra crossing",)
    assert elim.check_instruction("Describe a ZEBRA CROSSING at night.").reason == COPIED_PROMPT
    assert elim.check_instruction("Rewritten prompt: describe a road.").ok  # the shipped markers no longer apply


def test_default_parent_is_empty():
    elim = Eliminator(EliminationConfig(copy_ngram=1))
    assert elim.check_instruction("say xxxx again please", "xxxx").reason == COPIED_PROMPT


def _judge_once(reply: str, profile: str, **elim_kw):
    """One info-gain check with the model judge over the loopback server: (verdict, the request body)."""
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.testing.loopback import LoopbackServer

    with LoopbackServer(lambda body: reply) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True,
                                     profile=profile))
        elim = Eliminator(EliminationConfig(judge="model"), llm=llm, **elim_kw)

        async def run():
            v = await elim.check_info_gain("Name three fruits.", "Name three fruits from Peru.")
            await llm.aclose()
            return v

        v = asyncio.run(run())
        (body,) = srv.requests
    return v, body


def test_unreadable_model_verdict_without_an_embedder_keeps_its_tokens():
    from dataforge.llm import GenParams

    v, body = _judge_once("Hard to say.", "chat", judge_params=GenParams(temperature=0.5, max_tokens=4))
    assert v.ok and v.how == "no-judge" and v.tokens > 0
    assert body["temperature"] == 0.5 and body["max_tokens"] == 4  # the caller's judge parameters


def test_fewshot_models_are_judged_with_the_fewshot_template():
    from dataforge.prompts import render

    v, body = _judge_once("different", "fewshot")
    assert v.ok and v.how == "model"
    want = render("judge_info_gain", "fewshot", parent="Name three fruits.", child="Name three fruits from Peru.")
    assert "messages" not in body and body["prompt"] == want.text


def test_default_embedder_factory_uses_the_given_cache(tmp_path):
    """Lazy: nothing loads until called; then the real MiniLM, caching its vectors under `cache_dir`."""
    make = default_embedder_factory(str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
    emb = make()
    vecs = emb.encode(["Name three fruits."])
    assert vecs.shape == (1, 384) and any((tmp_path / "cache").iterdir())
