"""The evolver's constraint phrases must not copy a benchmark's wording: none of IFEval's fixed phrases
(tests/data/ifeval_phrases.txt, transcribed from its public instruction registry) may appear in any
phrase the constraint library generates, and no phrase may share a run of 8 words with them.

Every registered type is sampled (the registry is iterated, so types added later are covered) with many
seeds and instructions, so every template and option a type can draw is reached."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from dataforge.constraints import CONSTRAINTS, phrase, sample_constraint

PHRASES = Path(__file__).resolve().parent / "data" / "ifeval_phrases.txt"
INSTRUCTIONS = ("Describe the water cycle.", "Write a short story about a lighthouse keeper and his dog.",
                "Explain how vaccines train the immune system.", "Compare Python and Rust for systems programming.",
                "Plan a three-day trip to Lisbon on a budget.", "Summarise the causes of the French Revolution.",
                "Is the Rhine longer than the Danube?", "Should a small team use microservices?",
                "Can penguins fly? Explain briefly.", "")
SEEDS = 400
RUN = 8


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def ifeval_phrases() -> list[str]:
    lines = PHRASES.read_text(encoding="utf-8").splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip() and not line.startswith("#")]


def generated(type_name: str) -> set[str]:
    """Phrases of `type_name` drawn with many seeds over the instructions it applies to."""
    applies = CONSTRAINTS[type_name].applies
    fitting = [i for i in INSTRUCTIONS if applies is None or applies(i)]
    out: set[str] = set()
    for seed in range(SEEDS):
        rng = random.Random(seed)
        spec = sample_constraint(rng, fitting[seed % len(fitting)], types=[type_name])
        out.add(phrase(spec))
    return out


def test_the_phrase_list_is_read_whole():
    phrases = ifeval_phrases()
    assert len(phrases) >= 40 and "Is there anything else I can help with?" in phrases
    assert any("\n\n" in p for p in phrases)  # the escaped newline in the paragraph rule became a real one


@pytest.mark.parametrize("type_name", sorted(CONSTRAINTS))
def test_no_generated_phrase_copies_ifeval_wording(type_name):
    ifeval = [(p, _norm(p), _words(p)) for p in ifeval_phrases()]
    runs = {tuple(w[k:k + RUN]) for _, _, w in ifeval for k in range(len(w) - RUN + 1)}
    made = generated(type_name)
    assert made, f"{type_name}: generated nothing"
    for text in made:
        norm = _norm(text)
        copied = [p for p, n, _ in ifeval if n in norm]
        assert not copied, f"{type_name}: {text!r} contains IFEval's {copied}"
        w = _words(text)
        shared = [" ".join(w[k:k + RUN]) for k in range(len(w) - RUN + 1) if tuple(w[k:k + RUN]) in runs]
        assert not shared, f"{type_name}: {text!r} shares {RUN} words in a row with IFEval: {shared[0]!r}"


def test_the_check_catches_a_copied_phrase():
    """The test above would fail on IFEval's own end-phrase rule (what the library used to generate)."""
    copied = 'Finish your response with this exact phrase "Is there anything else I can help with?". No other words'
    ifeval = [_norm(p) for p in ifeval_phrases()]
    assert any(n in _norm(copied) for n in ifeval)
