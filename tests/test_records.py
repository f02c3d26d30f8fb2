"""The Record contract: stable ids, refusal of unknown keys, copies instead of mutation."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from dataforge.records import STATUSES, Lineage, Record, content_id


def test_id_is_a_stable_content_hash():
    a = Record(instruction="Add 2 and 3.", input="", output="5")
    b = Record(instruction="Add 2 and 3.", output="5")
    assert a.id == b.id == content_id("Add 2 and 3.", "", "5")
    assert len(a.id) == 16 and int(a.id, 16) >= 0
    # any change of text is a different record
    assert Record(instruction="Add 2 and 3.", output="6").id != a.id
    assert Record(instruction="Add 2 and 3.", input="5", output="").id != a.id


def test_id_is_the_same_on_every_machine():
    # a fixed value: the hash must not depend on Python's hash seed or the platform
    assert content_id("hello") == "96fd2e917a71dad1"
    assert content_id("hello") == hashlib.sha256(json.dumps(["hello", "", ""]).encode()).hexdigest()[:16]


def test_given_id_is_kept():
    r = Record(id="seed-7", instruction="x", output="y")
    assert r.id == "seed-7"


def test_unknown_keys_are_refused():
    with pytest.raises(ValidationError, match="instrucion"):
        Record.model_validate({"instruction": "x", "instrucion": "typo"})
    with pytest.raises(ValidationError):
        Lineage.model_validate({"parent": ["a"]})


def test_status_must_be_known():
    assert set(STATUSES) == {"accepted", "review", "rejected", "pending"}
    assert Record(instruction="x").status == "pending"
    with pytest.raises(ValidationError):
        Record(instruction="x", status="maybe")


def test_with_status_copies_and_keeps_reasons():
    r = Record(instruction="x", reasons=["short"])
    r2 = r.with_status("rejected", "duplicate", "low_coherence")
    assert r2.status == "rejected" and r2.reasons == ["short", "duplicate", "low_coherence"]
    assert r.status == "pending" and r.reasons == ["short"]  # the input record is untouched
    assert r2.id == r.id


def test_prompt_text_joins_instruction_and_input():
    assert Record(instruction="Sort these.", input="3 1 2").prompt_text == "Sort these.\n\n3 1 2"
    assert Record(instruction="Tell a joke.").prompt_text == "Tell a joke."


def test_json_round_trip_keeps_everything():
    r = Record(instruction="Übersetze: ☕", input="", output="Kaffee", task="translation", complexity=3.5,
               topic="food", scores={"coherence": 0.9}, status="accepted", reasons=["ok"],
               lineage=Lineage(parents=["p1"], root="p1", generator="evolve", operation="deepen", round=2,
                               model="openai:test", template="evol_depth.chat", template_hash="abc123def456",
                               timestamp="2026-01-01T00:00:00+00:00", history=[{"draft": "Kafe"}]),
               meta={"source": "unit", "nested": {"a": [1, 2]}})
    back = Record.model_validate_json(r.to_json())
    assert back == r
    assert "☕" in r.to_json()  # written as UTF-8, not \u escapes


def test_text_that_cannot_be_utf8_is_refused():
    with pytest.raises(ValidationError):
        Record(instruction="broken \ud800 surrogate")


def test_model_copy_leaves_the_original_alone():
    r = Record(instruction="x", meta={"k": 1})
    r2 = r.model_copy(update={"output": "y"})
    assert r.output == "" and r2.output == "y"
