"""`dataforge pairs`: k answers per instruction at a spread of temperatures, scored by the gate's own checks,
best paired with worst when the gap is clear; verifiable pairs where constraints are attached; TRL DPO rows
that TRL's DPO trainer tokenises; instructions without a clear pair go to the rejected file with the reason."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dataforge import constraints as C
from dataforge.cli import app
from dataforge.generate.pairs_rank import Candidate, choose_pair
from dataforge.io import read_records, write_records
from dataforge.records import Lineage, Record
from dataforge.testing import LoopbackServer
from dataforge.testing.loopback import last_user_message

runner = CliRunner()
TOPICS = ["the water cycle", "photosynthesis", "tides", "volcanoes", "rainbows", "bread rising", "magnets",
          "the seasons", "echoes", "rust"]
SPECS = [C.make_spec("no_commas"), C.make_spec("lowercase"), C.make_spec("word_count", relation="at_most", n=25),
         C.make_spec("start_with", phrase="Here is my answer:"),
         C.make_spec("end_with", phrase="Is there anything else I can help with?")]


def evolved(n: int = 20) -> list[Record]:
    """Records as evolve's add_constraints writes them: a library constraint attached and worded."""
    out = []
    for i in range(n):
        spec = SPECS[i % len(SPECS)]
        out.append(Record(instruction=f"Explain {TOPICS[i % len(TOPICS)]} to a curious student (case {i}). "
                                      f"{spec['phrase']}",
                          meta={"constraints": [spec]},
                          lineage=Lineage(generator="evolve", operation="add_constraints", round=1)))
    return out


def obedient_when_cool(body: dict) -> str:
    """A model that follows the constraint at low temperature and ignores it when hot."""
    text = last_user_message(body)
    topic = next(t for t in TOPICS if t in text)
    if body["temperature"] < 1.0:
        answer = f"here is how {topic} works in a few plain words and one short example"
        if "Here is my answer:" in text:
            answer = "Here is my answer: " + answer + "."
        if "Is there anything else" in text:
            answer += ". Is there anything else I can help with?"
        return answer
    return (f"Well, Friends, {topic} Is A Big Subject, And Here Is A Long Story About It, With Many Commas, "
            "Several Asides, " + "And More Words " * 12 + "Until It Ends.")


def _pairs(srv, src, out, *extra):
    return runner.invoke(app, ["pairs", str(src), "-o", str(out), "--json", "--base-url", srv.base_url, "--model",
                               "m", "--no-cache", "--no-include-output", *extra])


def test_verifiable_pairs_from_twenty_constrained_records_load_in_trls_dpo_path(tmp_path):
    src, out = tmp_path / "evolved.jsonl", tmp_path / "pairs.jsonl"
    write_records(src, evolved())
    with LoopbackServer(responder=obedient_when_cool) as srv:
        res = _pairs(srv, src, out, "--temperatures", "0.2,0.7,1.0,1.3", "--judges", "off")
        temps = sorted({b["temperature"] for b in srv.requests})
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)["details"]
    assert temps == [0.2, 0.7, 1.0, 1.3] and d["answers_sampled"] == 80
    assert d["pairs"] == {"verifiable": 20} and d["no_pair"] == {}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    by_id = {r.id: r for r in evolved()}
    assert len(rows) == 20
    for row in rows:
        (rec,) = [r for r in evolved() if r.instruction == row["prompt"][0]["content"]]
        specs = rec.meta["constraints"]
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert C.all_ok(specs, chosen) and not C.all_ok(specs, rejected)
        assert row["kind"] == "verifiable" and row["reason"].startswith("chosen meets every attached constraint")
        assert specs[0]["type"] in row["reason"] and 0 <= row["score_rejected"] <= 1 and 0 <= row["score_chosen"] <= 1
    assert by_id  # the ids of the pairs are new records (lineage parents are the inputs)
    back = list(read_records(out))
    assert all(r.preference.kind == "verifiable" for r in back)

    import datasets
    from trl import DPOConfig, DPOTrainer

    from dataforge.train.tiny import tiny_llama, tiny_tokenizer

    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    tok = tiny_tokenizer(chat_template=True)
    model = tiny_llama(len(tok))
    trainer = DPOTrainer(model=model, ref_model=tiny_llama(len(tok)), processing_class=tok, train_dataset=ds,
                         args=DPOConfig(output_dir=str(tmp_path / "dpo"), report_to=[], use_cpu=True, max_length=None))
    first = trainer.train_dataset[0]
    assert tok.decode(first["prompt_ids"]).endswith("<|assistant|>\n")
    assert tok.decode(first["chosen_ids"]).startswith(rows[0]["chosen"][0]["content"][:20])
    assert tok.decode(first["rejected_ids"]).startswith(rows[0]["rejected"][0]["content"][:20])


def test_scored_pairs_need_a_clear_gap_and_the_rest_is_rejected_with_the_reason(tmp_path):
    def refuses_when_hot(body: dict) -> str:
        text = last_user_message(body)
        if "carry out the instruction" in text:  # the gate's alignment judge
            return "no" if "I'm sorry" in text else "yes"
        if "contradict" in text:
            return "no"
        if "same" in text:
            return "The same answer every time, whatever the temperature."
        if body["temperature"] >= 1.0:
            return "I'm sorry, but I cannot help with that."
        return "Tides come from the moon's pull on the oceans, which raises water on the near and far sides."

    src, out = tmp_path / "in.jsonl", tmp_path / "p.jsonl"
    write_records(src, [Record(instruction="Why are there two high tides a day?"),
                        Record(instruction="Say the same thing twice, please.")])
    with LoopbackServer(responder=refuses_when_hot) as srv:
        res = _pairs(srv, src, out, "--to", "dpo_plain")
        assert res.exit_code == 0, res.output
        before = len(srv.requests)
        only = _pairs(srv, src, tmp_path / "v.jsonl", "--verifiable-only")
        assert len(srv.requests) == before  # nothing to verify: no request spent
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["kind"] == "scored" and row["chosen"].startswith("Tides come") and row["rejected"].startswith("I'm sorry")
    assert "refusal:" in row["reason"] and "alignment:" in row["reason"]  # the heuristics and the judge
    assert "chosen accepted" in row["reason"] and "rejected rejected" in row["reason"]
    (none,) = read_records(f"{out}.rejected.jsonl")
    assert none.reasons == ["pairs:answers_identical"] and none.status == "rejected"
    assert json.loads(only.stdout)["details"]["no_pair"] == {"no_attached_constraints": 2}


def test_pair_choice_rules():
    ok = Candidate("a", 0.2, status="accepted", score=1.0)
    meh = Candidate("b", 0.6, status="accepted", score=0.9)
    bad = Candidate("c", 1.4, status="review", score=0.8, reasons=["truncation:dangling_word"])
    assert choose_pair([ok, meh], False, 0.2, False) == "no_clear_gap"
    chosen, rejected, kind, reason = choose_pair([meh, bad, ok], False, 0.2, False)
    assert (chosen.text, rejected.text, kind) == ("a", "c", "scored") and "truncation:dangling_word" in reason
    broken = Candidate("d", 1.4, status="rejected", score=0.0)
    assert choose_pair([broken, Candidate("e", 1.0, status="rejected", score=0.5)], False, 0.2, False) == \
        "no_acceptable_answer"
    fails = Candidate("f", 1.0, status="accepted", score=1.0, constraint_failures=["no_commas(2 commas)"])
    # with constraints, meeting them beats a higher score; a rejected answer never wins a verifiable pair
    chosen, rejected, kind, _ = choose_pair([fails, meh, Candidate("g", 0.2, status="rejected")], True, 0.2, False)
    assert (chosen.text, rejected.text, kind) == ("b", "f", "verifiable")
    assert choose_pair([meh, ok], True, 0.2, True) == "no_constraint_split"
    assert choose_pair([ok], False, 0.2, False) == "too_few_answers"


@pytest.mark.parametrize("kind", ["conversation"])
def test_conversations_are_refused_by_name(kind, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "p.jsonl"
    write_records(src, [Record(instruction="q", output="a", turns=[{"role": "user", "content": "and?"},
                                                                   {"role": "assistant", "content": "b"}])])
    with LoopbackServer(responder=obedient_when_cool) as srv:
        res = _pairs(srv, src, out)
        assert srv.paths["/v1/chat/completions"] == 0
    assert res.exit_code == 0 and [r.reasons for r in read_records(f"{out}.rejected.jsonl")] == \
        [["pairs:conversation_not_supported"]]
