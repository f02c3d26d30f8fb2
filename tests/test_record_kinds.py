"""Conversations and preference pairs in the Record contract: typed fields, what they do to ids and to the
bytes of plain records, and every format that reads or writes them (chat, ShareGPT, TRL's DPO rows, Parquet)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dataforge.errors import DataforgeError
from dataforge.io import RejectSink, ReadStats, read_records, write_records
from dataforge.records import Preference, Record, Turn, content_id

CONVO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
         {"role": "assistant", "content": "2."}, {"role": "user", "content": "An odd one?"},
         {"role": "assistant", "content": "3."}, {"role": "user", "content": "A bigger one?"},
         {"role": "assistant", "content": "97."}]


def _conversation() -> Record:
    return Record(instruction="Name a prime.", output="2.", meta={"system": "Be brief."},
                  turns=[Turn(role="user", content="An odd one?", style="clarify"), Turn(role="assistant", content="3."),
                         Turn(role="user", content="A bigger one?"), Turn(role="assistant", content="97.")])


def _pair() -> Record:
    return Record(instruction="Name a prime. Answer in one word.", output="Seven",
                  preference=Preference(rejected="Seven is a prime number.", kind="verifiable", chosen_score=1.0,
                                        rejected_score=0.5, reason="rejected fails word_count"))


def test_a_plain_record_is_written_and_identified_exactly_as_before():
    r = Record(instruction="Add 2 and 3.", output="5")
    assert "turns" not in r.model_dump_json() and "preference" not in r.model_dump_json()
    assert r.id == content_id("Add 2 and 3.", "", "5")
    assert list(json.loads(r.model_dump_json())) == ["id", "instruction", "input", "output", "task", "complexity",
                                                     "topic", "scores", "status", "reasons", "lineage", "meta"]


def test_later_turns_and_the_rejected_answer_change_the_id():
    convo, pair = _conversation(), _pair()
    assert convo.id != Record(instruction="Name a prime.", output="2.").id
    shorter = convo.model_copy(update={"turns": convo.turns[:2], "id": ""})
    assert Record.model_validate(shorter.model_dump()).id != convo.id
    other = pair.model_copy(update={"preference": pair.preference.model_copy(update={"rejected": "7"}), "id": ""})
    assert Record.model_validate(other.model_dump()).id != pair.id
    assert convo.assistant_turns == 3 and Record(instruction="x").assistant_turns == 0


@pytest.mark.parametrize("roles", [["user"], ["assistant", "user"], ["user", "user"], ["user", "assistant", "user"]])
def test_turns_must_alternate_user_first_and_end_with_an_answer(roles):
    with pytest.raises(ValidationError, match="turns must alternate"):
        Record(instruction="q", output="a", turns=[{"role": r, "content": "x"} for r in roles])


def test_a_turn_is_typed_and_unknown_keys_are_refused():
    with pytest.raises(ValidationError):
        Record(instruction="q", output="a", turns=[{"role": "user", "content": "x", "mood": "odd"},
                                                   {"role": "assistant", "content": "y"}])
    back = Record.model_validate_json(_conversation().model_dump_json())
    assert back == _conversation() and back.turns[0].style == "clarify"
    assert '"style"' not in back.turns[1].model_dump_json()  # empty optional fields are not written


def test_chat_import_types_the_turns_and_a_refined_first_answer_keeps_them_on_export(tmp_path):
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"id": "c1", "messages": CONVO}) + "\n")
    (r,) = read_records(src)
    assert [t.content for t in r.turns] == ["An odd one?", "3.", "A bigger one?", "97."] and "messages" not in r.meta
    refined = r.model_copy(update={"output": "2 is the smallest prime."})  # what Self-Refine does
    out = tmp_path / "out.jsonl"
    write_records(out, [refined], fmt="chat")
    msgs = json.loads(out.read_text())["messages"]
    assert msgs == [*CONVO[:2], {"role": "assistant", "content": "2 is the smallest prime."}, *CONVO[3:]]


def test_old_records_with_meta_messages_still_read_and_export_whole(tmp_path):
    odd = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
           {"role": "user", "content": "Bye"}]  # ends on a question: not a Record.turns shape
    old = Record(instruction="Hi", output="Hello.", meta={"messages": odd})  # as records were written before
    path = tmp_path / "old.jsonl"
    path.write_text(old.model_dump_json() + "\n")
    (back,) = read_records(path)
    out = tmp_path / "chat.jsonl"
    write_records(out, [back], fmt="chat")
    assert json.loads(out.read_text())["messages"] == odd
    src = tmp_path / "odd.jsonl"
    src.write_text(json.dumps({"messages": odd}) + "\n")
    (imported,) = read_records(src)
    assert imported.turns == [] and imported.meta["messages"] == odd


def test_sharegpt_export_keeps_every_turn_and_reads_back(tmp_path):
    out = tmp_path / "sg.jsonl"
    write_records(out, [_conversation()], fmt="sharegpt")
    row = json.loads(out.read_text())
    assert [(m["from"], m["value"]) for m in row["conversations"]] == [
        ("system", "Be brief."), ("human", "Name a prime."), ("gpt", "2."), ("human", "An odd one?"), ("gpt", "3."),
        ("human", "A bigger one?"), ("gpt", "97.")]
    (back,) = read_records(out)
    assert [(t.role, t.content) for t in back.turns] == [(t.role, t.content) for t in _conversation().turns]


@pytest.mark.parametrize("fmt", ["dpo", "dpo_plain"])
def test_dpo_rows_carry_prompt_chosen_rejected_scores_and_reason_and_read_back(fmt, tmp_path):
    out = tmp_path / "pairs.jsonl"
    write_records(out, [_pair()], fmt=fmt)
    row = json.loads(out.read_text())
    if fmt == "dpo":
        assert row["prompt"] == [{"role": "user", "content": "Name a prime. Answer in one word."}]
        assert row["chosen"] == [{"role": "assistant", "content": "Seven"}]
        assert row["rejected"] == [{"role": "assistant", "content": "Seven is a prime number."}]
    else:
        assert (row["prompt"], row["chosen"], row["rejected"]) == ("Name a prime. Answer in one word.", "Seven",
                                                                   "Seven is a prime number.")
    assert (row["score_chosen"], row["score_rejected"], row["kind"]) == (1.0, 0.5, "verifiable")
    assert row["reason"] == "rejected fails word_count" and row["id"] == _pair().id
    (back,) = read_records(out)
    assert back.preference == _pair().preference and back.output == "Seven" and back.id == _pair().id


def test_dpo_refuses_records_without_a_rejected_answer_and_bad_rows_are_bad_lines(tmp_path):
    with pytest.raises(DataforgeError, match="not a preference pair"):
        write_records(tmp_path / "x.jsonl", [Record(instruction="q", output="a")], fmt="dpo")
    rows = [{"prompt": "Say hi.", "chosen": "Hi.", "rejected": "Bye."},  # plain, no scores: imported
            {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "rejected": "b"},
            {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "more"}], "chosen": "x", "rejected": "y"},
            {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": "high"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats, sink = ReadStats(), RejectSink(tmp_path / "bad.jsonl")
    recs = list(read_records(src, rejects=sink, stats=stats))
    sink.close()
    assert len(recs) == 1 and recs[0].preference.kind == "imported" and recs[0].preference.rejected == "Bye."
    bad = [json.loads(x) for x in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert [b["line"] for b in bad] == [2, 3, 4]
    assert "implicit prompt" in bad[0]["reason"] and "multi-turn prompts are not supported" in bad[1]["reason"]
    assert "'score_chosen' must be a number" in bad[2]["reason"]


def test_parquet_round_trip_keeps_turns_and_preference(tmp_path):
    recs = [_conversation(), _pair(), Record(instruction="plain", output="p")]
    out = tmp_path / "x.parquet"
    write_records(out, recs, fmt="parquet")
    assert list(read_records(out)) == recs
