"""The gate judges every answer of a conversation: a bad later answer sends the record to review (or
rejects it) with the answer's number in the reason, and each answer's scores land on its turn."""

from __future__ import annotations

from dataforge.io import read_records, write_records
from dataforge.quality.gate import FilterConfig, run_filter
from dataforge.quality.turns import turn_records
from dataforge.records import Record, Turn

FRIDGE = ("Explain how a refrigerator keeps food cold.",
          "A refrigerator pumps a refrigerant around a closed loop. Inside the cabinet the refrigerant evaporates and "
          "absorbs heat from the food; outside, a compressor squeezes it so it releases that heat through the coils "
          "at the back.")
TURN2 = ("Why does the refrigerant get cold when it evaporates?",
         "Evaporation needs energy: as the refrigerant turns from liquid to gas inside the cabinet, it takes that "
         "energy as heat from its surroundings, which is why the cabinet and the food in it get colder.")
TURN3_GOOD = ("Could you explain what the compressor does in that loop?",
              "The compressor raises the pressure of the refrigerant gas. Compressed gas is hotter than the room, so "
              "it gives off heat through the coils and condenses back into a liquid, ready to evaporate again.")
TURN3_CUT = ("Could you explain what the compressor does in that loop?",
             "The compressor raises the pressure of the refrigerant gas so that it becomes hotter than the room and "
             "can give off its heat through the coils at the back of the")


def _convo(third: tuple[str, str], second: tuple[str, str] = TURN2) -> Record:
    return Record(instruction=FRIDGE[0], output=FRIDGE[1],
                  turns=[Turn(role="user", content=second[0]), Turn(role="assistant", content=second[1]),
                         Turn(role="user", content=third[0]), Turn(role="assistant", content=third[1])])


def test_each_later_answer_is_checked_with_its_follow_up_and_the_previous_answer_as_context():
    (k2, r2), (k3, r3) = turn_records(_convo(TURN3_GOOD))
    assert (k2, k3) == (2, 3)
    assert (r2.instruction, r2.input, r2.output) == (TURN2[0], FRIDGE[1], TURN2[1])
    assert (r3.instruction, r3.input, r3.output) == (TURN3_GOOD[0], TURN2[1], TURN3_GOOD[1])


def test_a_conversation_whose_third_answer_is_bad_goes_to_review_naming_turn_3(tmp_path):
    src = tmp_path / "in.jsonl"
    refused = ("Can you show me the code of the compressor firmware?", "I'm sorry, but I cannot help with that.")
    write_records(src, [_convo(TURN3_GOOD), _convo(TURN3_CUT), _convo(TURN3_GOOD, second=refused),
                        Record(instruction=FRIDGE[0] + " Keep it short.", output=FRIDGE[1])])
    out = tmp_path / "gated.jsonl"
    run_filter(src, out, FilterConfig(no_llm=True, single_file=True, dedup=False, no_reference=True), progress=False)
    good, cut, refusal, plain = read_records(out)
    assert good.status == "accepted", good.reasons
    assert all(t.scores["truncation"] == 1.0 and t.scores["structure"] == 1.0 for t in good.turns[1::2])
    assert cut.status == "review"
    assert [x for x in cut.reasons if "turn" in x] == ["truncation:turn 3:dangling_word+unfinished_sentence"]
    assert cut.turns[1].scores["truncation"] == 1.0 and cut.turns[3].scores["truncation"] == 0.0
    assert refusal.status == "rejected" and any(x.startswith("refusal:turn 2:") for x in refusal.reasons)
    assert not any("turn 3" in x for x in refusal.reasons)
    assert "complexity" not in cut.turns[3].scores  # a task check: judged once, on the first exchange
    assert plain.status == "accepted" and plain.turns == []


def test_a_cut_off_later_answer_the_generator_saw_is_caught_even_when_the_text_looks_finished(tmp_path):
    src = tmp_path / "in.jsonl"
    r = _convo(TURN3_GOOD)
    write_records(src, [r.model_copy(update={"meta": {"converse": {"truncated_turns": [2]}}})])
    out = tmp_path / "gated.jsonl"
    run_filter(src, out, FilterConfig(no_llm=True, single_file=True, dedup=False, no_reference=True), progress=False)
    (rec,) = read_records(out)
    assert [x for x in rec.reasons if "turn" in x] == ["truncation:turn 2:finish_reason=length"]
