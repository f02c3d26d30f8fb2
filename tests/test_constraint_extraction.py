"""Model-based constraint extraction: the schema covers every registered type, the union with the
parser notes disagreements, and the whole path runs over real HTTP against the loopback server
scripted to answer from the labels (which proves the plumbing, not any model's accuracy)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dataforge.constraints import CONSTRAINTS, make_spec, sample_constraint
from dataforge.constraints.params import params_model, schema_model
from dataforge.llm import BackendConfig, make_llm, run_sync
from dataforge.quality.constraint_extraction import NOTE, ConstraintExtractor, merge
from dataforge.quality.constraint_parser import parse_constraints
from dataforge.quality.constraint_scoring import Score, load_labelled, spec_key
from dataforge.testing.label_responder import labels_responder
from dataforge.testing.loopback import LoopbackServer

LABELLED = Path(__file__).parent / "data" / "constraint_instructions.jsonl"


def test_every_type_has_params_and_sampled_specs_validate():
    assert set(CONSTRAINTS) <= set(__import__("dataforge.constraints.params", fromlist=["PARAMS"]).PARAMS)
    rng = random.Random(0)
    model = schema_model()
    for t in CONSTRAINTS:
        ins = "Is the Rhine long?" if t == "answer_choice" else "Describe a glacier."
        for _ in range(10):
            s = sample_constraint(rng, ins, types=[t])
            p = {k: v for k, v in s["params"].items() if k != "form"}
            params_model(t).model_validate(p)
            model.model_validate({"constraints": [{"type": t, "params": p}]})
    with pytest.raises(Exception):
        model.model_validate({"constraints": [{"type": "word_count", "params": {"relation": "below", "n": 3}}]})
    with pytest.raises(Exception):
        model.model_validate({"constraints": [{"type": "no_such", "params": {}}]})
    schema = json.dumps(model.model_json_schema())
    assert all(f'"const": "{t}"' in schema for t in CONSTRAINTS)


def test_merge_is_the_union_and_notes_each_side_alone():
    both = make_spec("no_commas")
    parser_only = make_spec("word_count", relation="at_most", n=49)
    model_only = make_spec("word_count", relation="at_most", n=50)
    specs, notes = merge([both, parser_only], [dict(both, phrase="other wording"), model_only])
    assert [spec_key(s) for s in specs] == [spec_key(both), spec_key(parser_only), spec_key(model_only)]
    assert notes == [f'{NOTE}:parser_only:word_count({{"n": 49, "relation": "at_most"}})',
                     f'{NOTE}:model_only:word_count({{"n": 50, "relation": "at_most"}})']
    assert merge([both], None) == ([both], [])  # the model was not asked or failed: the parser's list stands
    assert merge([], []) == ([], [])


def _llm(srv):
    return make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="judge", no_cache=True))


def test_extraction_over_http_scripted_from_labels():
    rows = load_labelled(LABELLED)[::6]  # every sixth row: all splits, negatives included
    model_score, merged_score = Score(), Score()
    with LoopbackServer(labels_responder(rows)) as srv:
        llm = _llm(srv)
        ex = ConstraintExtractor(llm)

        async def run_all():
            return [await ex.extract(r["instruction"]) for r in rows]

        results = run_sync(run_all())
        run_sync(llm.aclose())
    assert ex.requests == len(rows) and not ex.failures
    for r, res in zip(rows, results):
        gold = [tuple(c) for c in r["constraints"]]
        assert res.specs is not None and all(s["phrase"] for s in res.specs)
        model_score.add(gold, res.specs)
        specs, notes = merge(parse_constraints(r["instruction"]), res.specs)
        merged_score.add(gold, specs)
        assert all(n.startswith(f"{NOTE}:") for n in notes)
    assert model_score.recall() == model_score.precision() == 1.0
    assert merged_score.recall() == 1.0


def test_failures_are_counted_and_leave_the_parser_alone():
    with LoopbackServer(lambda body: "I think it wants fifty words, roughly.") as srv:
        llm = _llm(srv)
        ex = ConstraintExtractor(llm)
        res = run_sync(ex.extract("Answer in under 50 words."))
        run_sync(llm.aclose())
    assert res.specs is None and res.error.startswith("invalid_json") and ex.failures == {"invalid_json": 1}
    specs, notes = merge(parse_constraints("Answer in under 50 words."), res.specs)
    assert [s["type"] for s in specs] == ["word_count"] and notes == []


def test_a_few_shot_model_is_not_asked():
    from dataforge.llm.base import LLM

    class FewShot(LLM):
        async def chat(self, messages, params=None): ...
        async def complete(self, prompt, params=None): ...

    llm = FewShot()
    llm.profile = "fewshot"
    with pytest.raises(ValueError, match="needs a chat model"):
        ConstraintExtractor(llm)


def test_checker_unites_model_and_parser_and_notes_the_difference():
    """Through the gate's checks: the model reads a limit the parser misses; the record fails the limit
    (format) and its notes say which side found it; a refine draft does not ask the model again."""
    from dataforge.quality.checks import Checker
    from dataforge.quality.embed import get_embedder
    from dataforge.quality.rules import load_rules
    from dataforge.records import Record

    ins = "Describe owls in a line that fits on a sticky note. Answer in fewer than 50 words."
    rows = [{"instruction": ins, "constraints": [["char_count", {"relation": "at_most", "n": 40}],
                                                 ["word_count", {"relation": "at_most", "n": 49}]]}]
    rec = Record(instruction=ins, output="Owls are nocturnal birds of prey with silent flight and keen eyes.")
    with LoopbackServer(labels_responder(rows)) as srv:
        llm = _llm(srv)
        checker = Checker(load_rules(), get_embedder(None, None), extractor=ConstraintExtractor(llm))
        (sc,) = run_sync(checker.score([rec]))
        (draft,) = run_sync(checker.score([rec], ["Owls hunt at night."], judge_complexity=False))
        requests = len(srv.requests)
        run_sync(llm.aclose())
    assert sc.scores["format"] == 0.5 and sc.details["format"].startswith("char_count(66 characters, wanted at most 40")
    assert sc.notes == [f'{NOTE}:model_only:char_count({{"n": 40, "relation": "at_most"}})']
    assert draft.scores["format"] == 1.0 and requests == 1
