"""Eval loss by lineage (checked against per-record losses computed one by one), best checkpoint and early
stop, and --report-to tensorboard (the event file holds the log.jsonl values)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from dataforge.io import write_records  # noqa: E402
from dataforge.records import Lineage  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train.data import PromptFormatter, TaskInfo, collate, encode_records  # noqa: E402
from dataforge.train.evaluation import EvalSet, eval_table, evaluate, lineage_labels  # noqa: E402
from dataforge.train.losses import Objective, shifted_token_ce  # noqa: E402
from dataforge.train.model import InstructModel, load_instruct  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPS = ["deepen", "concretize", None]


def evolved_records(n: int):
    """toy records dressed as an evolve run: seeds (no operation) and two operations, two topics."""
    out = []
    for i, r in enumerate(toy_records(n)):
        op = OPS[i % 3]
        r.lineage = Lineage(generator="evolve" if op else "seed", operation=op, round=1 if op else 0)
        r.topic = "arithmetic" if r.task == "math" else "language"
        r.complexity = float(2 + i % 4) + 0.3
        out.append(r)
    return out


def test_eval_by_lineage_equals_per_record_losses_grouped_by_hand():
    tok = tiny_tokenizer()
    recs = evolved_records(9)
    exs = encode_records(recs, PromptFormatter(tok, "auto", False, 256), TaskInfo(), {})
    model = InstructModel(tiny_llama(len(tok)), TrainConfig().mods_dict())
    objective = Objective(model, TrainConfig(), 0)
    rows = [[[exs[0], exs[1]], [exs[2]]], [[exs[3], exs[4], exs[5]]], [[exs[6]], [exs[7], exs[8]]]]   # packed
    evalset = EvalSet.build(rows, recs, tok.pad_token_id)
    got = evaluate(objective, evalset, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    # by hand: each record alone, its summed response loss and token count
    per = {}
    with torch.no_grad():
        for r, e in zip(recs, exs):
            b = collate([[e]], tok.pad_token_id)
            loss, valid = shifted_token_ce(model(b)["logits"], b["resp_labels"])
            per[r.id] = (float((loss * valid).sum()), int(valid.sum()))
    total = sum(v[0] for v in per.values()) / sum(v[1] for v in per.values())
    assert abs(got["eval_loss"] - total) < 1e-6
    assert set(got["eval_by"]) == {"generator", "operation", "topic", "complexity"}
    for key in got["eval_by"]:
        expected: dict[str, list] = {}
        for r in recs:
            value = lineage_labels(r)[key] or "(none)"
            acc = expected.setdefault(value, [0.0, 0, 0])
            acc[0] += per[r.id][0]
            acc[1] += per[r.id][1]
            acc[2] += 1
        assert set(got["eval_by"][key]) == set(expected)
        for value, (s, n, k) in expected.items():
            g = got["eval_by"][key][value]
            assert abs(g["loss"] - s / n) < 1e-5 and g["tokens"] == n and g["samples"] == k
    assert set(got["eval_by"]["operation"]) == {"deepen", "concretize", "(none)"}
    assert set(got["eval_by"]["complexity"]) == {"2", "3", "4", "5"}           # rounded levels
    table = eval_table(got["eval_by"], got["eval_loss"])
    worst = max(got["eval_by"]["operation"].items(), key=lambda kv: kv[1]["loss"])[0]
    op_lines = [line for line in table.splitlines() if line.startswith("operation")]
    assert op_lines[0].split()[1] == worst and len(op_lines) == 3


def test_keys_without_any_value_are_left_out():
    tok = tiny_tokenizer()
    recs = toy_records(3)                                   # no lineage, no topic; complexity is set
    exs = encode_records(recs, PromptFormatter(tok, "auto", False, 256), TaskInfo(), {})
    evalset = EvalSet.build([[[e] for e in exs]], recs, tok.pad_token_id)
    assert {k for k, _ in evalset.groups} == {"complexity"}


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_best_checkpoint_early_stop_and_the_lineage_summary(tmp_path):
    data = tmp_path / "evolved.jsonl"
    write_records(data, evolved_records(60))
    tok = tiny_tokenizer()
    # a learning rate far too high: eval loss improves at first, then gets worse and the run stops
    cfg = TrainConfig(max_steps=30, batch_size=4, max_length=128, lr=0.3, warmup_ratio=0.0, eval_every=1,
                      eval_fraction=0.2, early_stop_patience=2, save_every=1, keep_checkpoints=1)
    s = run_train(data, tmp_path / "run", cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    log = _log(tmp_path / "run")
    evals = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e]
    best_step, best_loss = min(evals, key=lambda x: x[1])
    assert s["stopped_early"]["step"] == s["steps"] < 30
    assert s["stopped_early"]["reason"] == (f"eval loss did not improve for 2 evals (best {best_loss:.6f} at "
                                            f"step {best_step})")
    assert s["best_step"] == best_step and abs(s["best_eval_loss"] - best_loss) < 1e-12
    # stopped once `patience` evals in a row were no better than the best
    after = [loss for step, loss in evals if step > best_step]
    assert len(after) == 2 and all(loss >= best_loss for loss in after)
    assert set(s["eval_loss_by"]["operation"]) == {"deepen", "concretize", "(none)"}
    assert set(s["eval_loss_by"]["topic"]) == {"arithmetic", "language"}
    assert all("eval_by" in e for e in log if "eval_loss" in e)
    # best/ holds the model of that eval: reloaded, it gives that eval loss again
    model, tok2, _ = load_instruct(tmp_path / "run" / "best")
    eval_recs = [r for r in evolved_records(60) if r.id in {x for x in _eval_ids(s, tmp_path)}]
    exs = encode_records(eval_recs, PromptFormatter(tok2, "auto", False, 128), TaskInfo(), {})
    evalset = EvalSet.build([[[e] for e in exs]], eval_recs, tok2.pad_token_id)
    again = evaluate(Objective(model, TrainConfig(), 0), evalset, torch.device("cpu"),
                     lambda: torch.autocast("cpu", enabled=False))
    assert abs(again["eval_loss"] - best_loss) < 1e-5
    # started again, a stopped run stays stopped
    tok3 = tiny_tokenizer()
    s2 = run_train(data, tmp_path / "run", cfg, model=tiny_llama(len(tok3)), tokenizer=tok3, progress=False)
    assert s2["steps"] == s["steps"] and s2["resumed_from"] and s2["best_step"] == best_step


def _eval_ids(summary, tmp_path):
    from dataforge.train.data import split_eval

    _, held = split_eval(evolved_records(60), 0.2, 256)
    assert len(held) == summary["eval_samples"]
    return [r.id for r in held]


def test_tensorboard_event_file_holds_the_logged_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tmp_path / "evolved.jsonl"
    write_records(data, evolved_records(24))
    tok = tiny_tokenizer()
    cfg = TrainConfig(max_steps=3, batch_size=4, max_length=128, eval_every=2, eval_fraction=0.2,
                      report_to="tensorboard")
    run_train(data, tmp_path / "run", cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    log = _log(tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lm", "train/instruction", "train/lr", "eval/eval_loss"} <= tags
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert all(abs(e.value - line["loss"]) < 1e-5 for e, line in zip(loss, log))
    ev = acc.Scalars("eval/eval_loss")
    assert [e.step for e in ev] == [2] and abs(ev[0].value - log[1]["eval_loss"]) < 1e-5
    by_op = acc.Scalars("eval/by_operation/deepen")
    assert abs(by_op[0].value - log[1]["eval_by"]["operation"]["deepen"]["loss"]) < 1e-5



def test_best_tracker_counts_strict_improvements_and_keeps_patience_across_resume():
    from dataforge.train.selection import BestTracker

    t = BestTracker(patience=2)
    assert t.update(1, 1.0) is True and t.update(2, 1.0) is False          # equal is not better
    assert t.evals_since_best == 1 and not t.stop
    resumed = BestTracker.from_state(t.state(), patience=2)
    assert resumed.best_step == 1 and resumed.evals_since_best == 1
    assert resumed.update(3, 1.5) is False and resumed.stop and resumed.stopped_at == 3
    assert BestTracker.from_state(None, 0).update(1, 5.0) is True


def test_eval_table_text():
    eval_by = {"operation": {"deepen": {"loss": 1.5, "samples": 2, "tokens": 10},
                             "(none)": {"loss": 2.25, "samples": 1, "tokens": 4}},
               "complexity": {"3": {"loss": 1.0, "samples": 3, "tokens": 14}}}
    expected = "\n".join([
        "eval loss by lineage (response tokens; higher = the model fits that data worse)",
        "lineage     value                        samples  tokens eval loss",
        "-" * 66,
        "operation   (none)                             1       4    2.2500",
        "operation   deepen                             2      10    1.5000",
        "complexity  3                                  3      14    1.0000",
        "all                                                         1.7143"])
    assert eval_table(eval_by, 1.7142857) == expected
    assert eval_table({}, 1.0) == "" and eval_table(eval_by).splitlines()[-1].startswith("complexity")
    long_topic = {"topic": {"a" * 40: {"loss": 1.0, "samples": 1, "tokens": 2}}}
    assert eval_table(long_topic).splitlines()[3] == "topic       " + "a" * 28 + "       1       2    1.0000"


def test_lineage_labels_and_records_without_lineage():
    from dataforge.records import Record

    r = Record(instruction="x", output="y", topic="t", complexity=6.6,
               lineage=Lineage(generator="evolve", operation="deepen"))
    assert lineage_labels(r) == {"generator": "evolve", "operation": "deepen", "topic": "t", "complexity": "7"}
    assert lineage_labels(Record(instruction="x", output="y"))["complexity"] is None
    tok = tiny_tokenizer()
    recs = evolved_records(3)
    exs = encode_records(recs, PromptFormatter(tok, "auto", False, 256), TaskInfo(), {})
    exs[0].record_id = "not-in-the-records"             # a sample whose record is unknown: every key "(none)"
    evalset = EvalSet.build([[[e] for e in exs]], recs, tok.pad_token_id)
    first = [evalset.groups[g] for g in evalset.sample_groups[0][0].tolist()]
    assert all(value == "(none)" for _, value in first) and len(first) == 4
