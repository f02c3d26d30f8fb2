"""Every constraint checker on a response that satisfies it and one that does not, plus the
sampler's contract (seeded, phrase matches type, conflicting types never combined)."""

from __future__ import annotations

import json
import random

import pytest

from dataforge.constraints import (CONSTRAINTS, all_ok, check, check_all, compatible_types, conflicting, make_spec,
                                   phrase, sample_constraint)
from dataforge.constraints import text as T
from dataforge.errors import DataforgeError

TEN_WORDS = "one two three four five six seven eight nine ten"

# (type, params, a response that passes, a response that fails)
CASES = [
    ("word_count", {"relation": "at_most", "n": 10}, TEN_WORDS, TEN_WORDS + " eleven"),
    ("word_count", {"relation": "at_least", "n": 10}, TEN_WORDS, "only three words"),
    ("word_count", {"relation": "exactly", "n": 10}, TEN_WORDS + ".", "one two three"),
    ("sentence_count", {"relation": "exactly", "n": 2}, "It rains. Dr Smith stays home!", "One. Two. Three."),
    ("sentence_count", {"relation": "at_most", "n": 1}, "Just a single sentence here.", "First one. Second one."),
    ("sentence_count", {"relation": "at_least", "n": 3}, "A is here. B is here? C is too.", "A is here."),
    ("paragraph_count", {"relation": "exactly", "n": 2}, "First para.\n\nSecond para.", "Only one paragraph."),
    ("paragraph_count", {"relation": "at_most", "n": 2}, "Single.", "A.\n\nB.\n\n\nC."),
    ("paragraph_count", {"relation": "at_least", "n": 3}, "A.\n***\nB.\n\nC.", "A.\nstill A."),
    ("bullet_count", {"n": 3}, "Items:\n* apples\n* pears\n- plums", "* apples\n* pears"),
    ("bullet_count", {"n": 2}, "1. first\n2. second", "* a\n* b\n* c"),
    ("sections", {"n": 2}, "## Causes\ntext\n## Effects\ntext", "## Only one\ntext"),
    ("include_keywords", {"keywords": ["river", "delta"]}, "The River ends in a delta.", "The river ends here."),
    ("exclude_keywords", {"keywords": ["very"]}, "Every everyday thing is fine.", "It is very good."),
    ("keyword_frequency", {"keyword": "water", "relation": "at_least", "n": 2}, "Water, water everywhere.",
     "Waterfalls have water."),
    ("keyword_frequency", {"keyword": "water", "relation": "exactly", "n": 1}, "Drink water.", "water water"),
    ("keyword_frequency", {"keyword": "water", "relation": "at_most", "n": 1}, "No liquid.", "water, water"),
    ("json_format", {}, '```json\n{"a": [1, 2]}\n```', '{"a": 1'),
    ("json_format", {}, '[{"x": 1}]', '"just a string"'),
    ("start_with", {"phrase": "Short answer:"}, "  short answer: yes.", "Yes. Short answer: yes."),
    ("end_with", {"phrase": "Hope this helps."}, "Do X.\nHope this helps.  ", "Hope this helps. Do X."),
    ("lowercase", {}, "all lower case, even 'quotes'.", "Not all lower."),
    ("lowercase", {}, "fine", "1234 !!"),  # no letters at all is not a lowercase answer
    ("uppercase", {}, "ALL CAPS HERE 123.", "ALL CAPS but one"),
    ("no_commas", {}, "No commas at all.", "One, two."),
    ("placeholders", {"n": 2}, "Dear [name], see you at [address].", "Dear [name], see [docs](http://x)."),
    ("title", {}, "<<The Water Cycle>>\nWater evaporates.", "<The Water Cycle>\nWater evaporates."),
    ("title", {}, "<<a>> body", "<<>> body"),
    ("highlights", {"n": 2}, "This is *key* and **also key**.", "This is *key* only."),
    ("quotation", {}, '"Everything quoted."', 'Not quoted."'),
    ("postscript", {"marker": "P.S."}, "Main text.\n\nP.S. Remember the deadline.", "Main text. ps later"),
    ("postscript", {"marker": "P.P.S."}, "Body.\nP.P.S. extra note", "P.P.S. only a postscript"),
    ("char_count", {"relation": "at_most", "n": 12}, " Short text. ", "Longer text here."),
    ("letter_frequency", {"letter": "z", "relation": "at_least", "n": 2}, "Zany zebras.", "A zebra."),
    ("capital_word_frequency", {"relation": "at_least", "n": 2}, "VERY GOOD.", "Very GOOD. I"),
    ("paragraph_dividers", {"relation": "exactly", "n": 2}, "One.\n***\nTwo.", "One.\n\nTwo."),
    ("first_word", {"paragraphs": 2, "nth": 2, "word": "Finally"}, "A.\n\nFinally, b.", "A.\n\nThen b."),
    ("repeat_prompt", {"request": "Name a river."}, "Name a river. The Nile.", "The Nile."),
    ("two_responses", {}, "Rome.\n******\nParis.", "Rome.\n***\nParis."),
    ("answer_choice", {"options": ["yes", "no"]}, "I would say yes", "I would say yes and no"),
    ("response_language", {"language": "es"}, "Esta mañana fuimos al mercado para comprar pan fresco y fruta.",
     "This morning we went to the market to buy fresh bread and fruit."),
]


@pytest.mark.parametrize("ctype,params,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_accepts_good_and_rejects_bad(ctype, params, good, bad):
    spec = make_spec(ctype, **params)
    ok = check(spec, good)
    assert ok.ok, f"{ctype} should pass {good!r}: {ok.detail}"
    assert ok.type == ctype
    ko = check(spec, bad)
    assert not ko.ok, f"{ctype} should fail {bad!r}: {ko.detail}"
    assert ko.detail  # a failure explains itself


def test_every_registered_type_has_a_case():
    assert {c[0] for c in CASES} == set(CONSTRAINTS)
    assert len(CONSTRAINTS) >= 27


def test_sampling_is_seeded_and_phrases_match():
    ins = "Describe how glaciers shape mountain valleys over thousands of years."
    a = [sample_constraint(random.Random(7), ins) for _ in range(3)]
    b = [sample_constraint(random.Random(7), ins) for _ in range(3)]
    assert a == b
    rng = random.Random(3)
    seen = set()
    for _ in range(400):
        spec = sample_constraint(rng, ins)
        seen.add(spec["type"])
        assert spec["phrase"] == phrase(spec) and spec["phrase"].strip()
        json.dumps(spec)  # storable in record.meta
        assert isinstance(check(spec, "Some answer."), object)
    # every type that fits the instruction is drawn; a yes/no verdict does not fit a "Describe ..." task
    assert seen == set(CONSTRAINTS) - {"answer_choice"} == set(compatible_types(instruction=ins))


def test_keywords_come_from_the_instruction_content():
    rng = random.Random(0)
    ins = "Explain how glaciers carve valleys."
    for _ in range(20):
        spec = sample_constraint(rng, ins, types=["include_keywords"])
        for k in spec["params"]["keywords"]:
            assert k in {"glaciers", "carve", "valleys"} | {"process", "example", "result"} or k.isalpha()
            assert k != "explain"


def test_conflicting_types_are_never_sampled_together():
    assert conflicting("lowercase", "uppercase") and conflicting("uppercase", "lowercase")
    assert conflicting("word_count", "word_count")
    assert not conflicting("no_commas", "title")
    rng = random.Random(11)
    for _ in range(200):
        first = sample_constraint(rng)
        second = sample_constraint(rng, existing=[first])
        assert not conflicting(first["type"], second["type"])
    assert "uppercase" not in compatible_types(["lowercase"])


def test_check_all_and_bad_specs():
    specs = [make_spec("no_commas"), make_spec("word_count", relation="at_most", n=5)]
    res = check_all(specs, "Short and sweet.")
    assert [r.ok for r in res] == [True, True] and all_ok(specs, "Short and sweet.")
    assert not all_ok(specs, "Short, and sweet.")
    assert check_all(None, "x") == []
    with pytest.raises(DataforgeError, match="unknown constraint type"):
        check({"type": "no_such_type", "params": {}}, "x")
    with pytest.raises(DataforgeError, match="bad params"):
        check({"type": "word_count", "params": {"n": 3}}, "x")


def test_text_measures():
    assert T.word_count("It's a well-known fact: 3 cats.") == 6
    assert len(T.sentences("Hi there. How are you? Fine!")) == 3
    assert len(T.paragraphs("a\n\n\nb\n \nc")) == 3
    assert T.count_phrase("Ice cream; ICE CREAM! icecream", "ice cream") == 2
