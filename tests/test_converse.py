"""`dataforge converse`: single-turn records become conversations of --turns answers, every turn typed in
`Record.turns`, through the loopback server playing a model (follow-ups by style, then answers); botched
follow-ups are asked for again and counted, conversations that cannot finish go to the rejected file; the
chat export keeps every turn, loads with `datasets` and is tokenised by TRL's SFT trainer."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES
from dataforge.cli import app
from dataforge.io import read_records
from dataforge.testing import LoopbackServer
from dataforge.testing.loopback import last_user_message

runner = CliRunner()
SEEDS = EXAMPLES / "seeds.jsonl"
FOLLOW_UP_ASK = "Write the user's next message"
QUESTIONS = ["What exactly do you mean by the first point you made?",
             "Could you walk me through a concrete example with real numbers?",
             "Are there any situations where this advice would be a bad idea?"]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:6], 16)


def model(body: dict) -> str:
    """Follow-ups in the voice of a user, answers in the voice of an assistant."""
    text = last_user_message(body)
    if FOLLOW_UP_ASK in text:
        return QUESTIONS[text.count("User:") - 1]  # a different question at every turn
    return f"Here is the answer to that, point by point (note {_h(json.dumps(body['messages'])) % 9973})."


def _seeds(tmp_path, n=10):
    src = tmp_path / "seeds.jsonl"
    src.write_text("".join(SEEDS.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return src


def _converse(srv, src, out, *extra):
    return runner.invoke(app, ["converse", str(src), "-o", str(out), "--turns", "3", "--json", "--base-url",
                               srv.base_url, "--model", "test", "--no-cache", *extra])


def test_ten_seeds_become_three_answer_conversations_that_export_to_trl(tmp_path):
    src, out = _seeds(tmp_path), tmp_path / "dialogues.jsonl"
    with LoopbackServer(responder=model) as srv:
        res = _converse(srv, src, out, "--seed", "4")
        assert res.exit_code == 0, res.output
        requests = list(srv.requests)
    summary = json.loads(res.stdout)
    recs = list(read_records(out))
    seeds = list(read_records(src))
    assert len(recs) == len(seeds) == 10 and summary["out"] == {"pending": 10}
    assert all(r.assistant_turns == 3 and len(r.turns) == 4 for r in recs)
    assert all(r.lineage.generator == "converse" and r.lineage.parents == [s.id] for r, s in zip(recs, seeds))
    assert all((r.instruction, r.output) == (s.instruction, s.output) for r, s in zip(recs, seeds))
    styles = [t.style for r in recs for t in r.turns if t.role == "user"]
    assert set(styles) <= {"clarify", "deeper", "constraint", "challenge"} and len(set(styles)) >= 3
    restated = [t for r in recs for t in r.turns if t.constraints]
    assert all(t.style == "constraint" and t.content.startswith("Please give me that answer again.")
               and t.constraints[0]["phrase"] in t.content for t in restated)
    # the answer to a follow-up sees the whole conversation so far, as chat messages
    answers = [b for b in requests if FOLLOW_UP_ASK not in last_user_message(b)]
    assert max(len(b["messages"]) for b in answers) == 5  # user, assistant, user, assistant, user
    assert sum(summary["details"]["follow_up_styles"].values()) == 20

    chat = tmp_path / "chat.jsonl"
    res = runner.invoke(app, ["convert", str(out), "-o", str(chat), "--to", "chat"])
    assert res.exit_code == 0, res.output
    import datasets

    ds = datasets.load_dataset("json", data_files=str(chat), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 10 and all([m["role"] for m in row] == ["user", "assistant"] * 3 for row in ds["messages"])
    assert ds[0]["messages"][3]["content"] == recs[0].turns[1].content

    from trl import SFTConfig, SFTTrainer

    from dataforge.train.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer(chat_template=True)
    trainer = SFTTrainer(model=tiny_llama(len(tok)), processing_class=tok, train_dataset=ds,
                         args=SFTConfig(output_dir=str(tmp_path / "sft"), report_to=[], max_length=None,
                                        assistant_only_loss=False, use_cpu=True, dataset_num_proc=None))
    row = trainer.train_dataset[0]
    text = tok.decode(row["input_ids"])
    assert all(m["content"] in text for m in ds[0]["messages"])  # every turn made it into the tokens


def test_botched_follow_ups_are_asked_again_and_hopeless_conversations_are_rejected(tmp_path):
    calls: dict[str, int] = {}

    def clumsy(body: dict) -> str:
        text = last_user_message(body)
        if FOLLOW_UP_ASK not in text:
            return "A fine answer to the question, with detail."
        key = text.split("Conversation:")[1][:200]
        calls[key] = calls.get(key, 0) + 1
        if "haiku" in text.lower():
            return "Sure! Here is a clearer answer for you."  # the model answers instead of asking, every time
        return "and the" if calls[key] == 1 else "Could you explain that last step again?"

    src, out = _seeds(tmp_path, 6), tmp_path / "d.jsonl"
    with LoopbackServer(responder=clumsy) as srv:
        res = _converse(srv, src, out, "--styles", "clarify", "--turns", "2")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    kept, rejected = list(read_records(out)), list(read_records(f"{out}.rejected.jsonl"))
    n_sentiment = sum("haiku" in r.instruction.lower() for r in read_records(src))
    assert n_sentiment >= 1 and len(rejected) == n_sentiment and len(kept) == 6 - n_sentiment
    assert all(r.reasons == ["converse:follow_up_assistant_voice (turn 2)"] and r.status == "rejected"
               and not r.turns for r in rejected)
    assert all(r.turns[0].content == "Could you explain that last step again?" for r in kept)
    dropped = summary["details"]["follow_ups_dropped"]
    assert dropped == {"fragment:too_short": len(kept), "assistant_voice": 2 * n_sentiment}


def test_records_without_an_answer_are_rejected_and_unknown_styles_refused(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Name a colour.", "output": ""}) + "\n")
    out = tmp_path / "o.jsonl"
    with LoopbackServer(responder=model) as srv:
        res = _converse(srv, src, out)
        assert res.exit_code == 0, res.output
        bad = runner.invoke(app, ["converse", str(src), "-o", str(out), "--styles", "gossip", "--base-url",
                                  srv.base_url, "--model", "test"])
    assert [r.reasons for r in read_records(f"{out}.rejected.jsonl")] == [["converse:no_first_answer"]]
    assert "--styles: unknown follow-up style(s) ['gossip']" in str(bad.exception)


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("Why?", "fragment:too_short"), ("Can you explain the part about the", "fragment:dangling_word"),
    ("Sure! Here is what you asked for.", "assistant_voice"), ("<|im_start|>user Why is that so?", "template_leakage"),
    ("The weather is nice today in Paris.", "not_a_request"), ("Explain it again for a child", None),
    ("What about rivers that freeze in winter?", None), ("I need three more examples of this", None)])
def test_user_message_problems(text, reason):
    from dataforge.generate.user_turns import user_message_problem

    assert user_message_problem(text) == reason
