"""The parameter models of constraints/params.py: the exact range each parameter accepts (its edge value
accepted, the value just past it refused), unknown fields and types refused with a message naming them,
and the structured-output schema restricted to the types asked for."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dataforge.constraints import CONSTRAINTS
from dataforge.constraints.language import LANGUAGE_NAMES
from dataforge.constraints.params import PARAMS, params_model, schema_model

# (type, params at the edge of what is allowed, the same params one step past the edge)
EDGES = [
    ("word_count", {"relation": "at_most", "n": 0}, {"relation": "at_most", "n": -1}),
    ("word_count", {"relation": "around", "n": 5}, {"relation": "below", "n": 5}),
    ("bullet_count", {"n": 1}, {"n": 0}),
    ("placeholders", {"n": 1}, {"n": 0}),
    ("sections", {"n": 1, "marker": None}, {"n": 0}),
    ("include_keywords", {"keywords": ["sea"]}, {"keywords": []}),
    ("keyword_frequency", {"keyword": "a", "relation": "exactly", "n": 0}, {"keyword": "", "relation": "exactly",
                                                                            "n": 0}),
    ("keyword_frequency", {"keyword": "a", "relation": "exactly", "n": 0}, {"keyword": "a", "relation": "exactly",
                                                                            "n": -1}),
    ("letter_frequency", {"letter": "e", "relation": "at_least", "n": 0}, {"letter": "ee", "relation": "at_least",
                                                                           "n": 0}),
    ("letter_frequency", {"letter": "e", "relation": "at_least", "n": 0}, {"letter": "", "relation": "at_least",
                                                                           "n": 0}),
    ("start_with", {"phrase": "Yes"}, {"phrase": ""}),
    ("postscript", {"marker": "P.P.S."}, {"marker": "PS"}),
    ("response_language", {"language": "de"}, {"language": "German"}),
    ("first_word", {"paragraphs": 1, "nth": 1, "word": "So"}, {"paragraphs": 0, "nth": 1, "word": "So"}),
    ("first_word", {"paragraphs": None, "nth": 1, "word": "So"}, {"paragraphs": None, "nth": 0, "word": "So"}),
    ("repeat_prompt", {"request": "Say hi."}, {"request": ""}),
    ("answer_choice", {"options": ["yes", "no"]}, {"options": ["yes"]}),
    ("no_commas", {}, {"n": 1}),                                           # no parameters at all
    ("word_count", {"relation": "exactly", "n": 3}, {"relation": "exactly", "n": 3, "extra": 1}),
]


@pytest.mark.parametrize("type_name,ok,bad", EDGES)
def test_each_parameter_accepts_its_edge_and_refuses_one_past_it(type_name, ok, bad):
    model = params_model(type_name)
    assert model.model_validate(ok).model_dump() == ok
    with pytest.raises(ValidationError):
        model.model_validate(bad)
    whole = schema_model()
    assert whole.model_validate({"constraints": [{"type": type_name, "params": ok}]}).constraints[0].params == \
        model.model_validate(ok)
    with pytest.raises(ValidationError):
        whole.model_validate({"constraints": [{"type": type_name, "params": bad}]})


def test_every_language_code_and_only_codes_are_accepted():
    model = params_model("response_language")
    for code in LANGUAGE_NAMES:
        assert model.model_validate({"language": code}).language == code
    assert model.model_json_schema()["properties"]["language"]["enum"] == sorted(LANGUAGE_NAMES)


def test_an_unknown_type_is_refused_with_its_name():
    with pytest.raises(KeyError) as err:
        params_model("no_such_type")
    assert err.value.args == ("constraint type 'no_such_type' has no parameter model in constraints/params.py",)
    assert set(PARAMS) >= set(CONSTRAINTS)
    assert all(params_model(t) is PARAMS[t] for t in CONSTRAINTS)


def test_the_schema_can_be_restricted_to_some_types():
    two = schema_model(("word_count", "no_commas"))
    got = two.model_validate({"constraints": [{"type": "no_commas", "params": {}},
                                              {"type": "word_count", "params": {"relation": "at_least", "n": 9}}]})
    assert [c.type for c in got.constraints] == ["no_commas", "word_count"]
    assert got.constraints[1].params.n == 9
    with pytest.raises(ValidationError):                                   # a type not asked for
        two.model_validate({"constraints": [{"type": "lowercase", "params": {}}]})
    one = schema_model(("title",))                                         # one type: no union needed
    assert one.model_validate({"constraints": [{"type": "title", "params": {}}]}).constraints[0].type == "title"
    with pytest.raises(ValidationError):
        one.model_validate({"constraints": [{"type": "no_commas", "params": {}}]})
    assert schema_model().model_validate({}).constraints == []
    assert schema_model() is schema_model()                                # built once
