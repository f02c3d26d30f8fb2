"""The trainer's helpers, each against what it must compute: eval loss, parameter groups, LR factor at its
edges, checkpoints (round trip, pruning, refused settings), input filtering, EWC reference texts, the batch
plan across epochs, log trimming. Fast: no training run."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.io import write_records  # noqa: E402
from dataforge.records import Record  # noqa: E402
from dataforge.train import checkpoints, trainer  # noqa: E402
from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import (IGNORE, SEG_TEMPLATE, PromptFormatter, TaskInfo, collate,  # noqa: E402
                                  encode_records)
from dataforge.train.evaluation import EvalSet, evaluate  # noqa: E402
from dataforge.train.losses import Objective  # noqa: E402
from dataforge.train.model import InstructModel  # noqa: E402
from dataforge.train.tiny import tiny_model, tiny_tokenizer, toy_records  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")]
TASKS = ["classification", "generation", "math"]


def _objective(**cfg):
    tok = tiny_tokenizer()
    c = TrainConfig(**cfg)
    model = InstructModel(tiny_model("llama", len(tok)), c.mods_dict(), len(TASKS))
    exs = encode_records(toy_records(6), PromptFormatter(tok, "auto"), TaskInfo(TASKS, c.task_kinds,
                                                                                 c.temperature_by_kind), {})
    return tok, c, Objective(model, c, len(TASKS)), exs


def test_eval_loss_is_token_weighted_over_all_batches():
    tok, _, obj, exs = _objective()
    evalset = EvalSet.build([[[exs[0]], [exs[1]]], [[exs[2]]]], [], tok.pad_token_id)
    batches = evalset.batches
    got = evaluate(obj, evalset, torch.device("cpu"), nullcontext)
    total = {"resp": [0.0, 0], "lm": [0.0, 0]}
    for b in batches:
        logits = obj.model(b)["logits"]
        for key, labels in (("resp", b["resp_labels"]), ("lm", b["lm_labels"])):
            tgt = labels[:, 1:]
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
            total[key][0] += float(ce.sum())
            total[key][1] += int((tgt != IGNORE).sum())
    assert got["eval_loss"] == pytest.approx(total["resp"][0] / total["resp"][1], rel=1e-6)
    assert got["eval_lm_loss"] == pytest.approx(total["lm"][0] / total["lm"][1], rel=1e-6)
    assert obj.training                                           # back in training mode
    assert evaluate(obj, EvalSet.build([], [], tok.pad_token_id), torch.device("cpu"), nullcontext) == {}


def test_parameter_groups():
    tok, cfg, obj, _ = _objective(segment_embedding=True, task_weighting="uncertainty", lr=1e-4, mods_lr=1e-2,
                                  weight_decay=0.1)
    frozen = obj.model.base.model.layers[0].mlp.up_proj.weight
    frozen.requires_grad_(False)
    decay, no_decay, mods = trainer.param_groups(obj, cfg)
    names = {id(p): n for n, p in obj.named_parameters()}
    assert {names[id(p)] for p in mods["params"]} == {"model.segment_emb.table.weight", "weighting.raw_log_var"}
    assert all(names[id(p)].startswith("model.base.") and p.ndim == 2 for p in decay["params"])
    assert all(names[id(p)].startswith("model.base.") and p.ndim == 1 for p in no_decay["params"])
    assert id(frozen) not in {id(p) for g in (decay, no_decay, mods) for p in g["params"]}
    n_trainable = sum(1 for p in obj.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) + len(mods["params"]) == n_trainable
    assert (decay["lr"], decay["weight_decay"], decay["peak_lr"]) == (1e-4, 0.1, 1e-4)
    assert (no_decay["lr"], no_decay["weight_decay"], no_decay["peak_lr"]) == (1e-4, 0.0, 1e-4)
    assert (mods["lr"], mods["weight_decay"], mods["peak_lr"]) == (1e-2, 0.0, 1e-2)
    _, cfg0, plain, _ = _objective()
    assert len(trainer.param_groups(plain, cfg0)) == 2                # no new modules: no third group


def test_lr_factor_edges():
    assert trainer.lr_factor(0, 10, 1) == 1.0
    assert trainer.lr_factor(0, 10, 4) == 0.25 and trainer.lr_factor(3, 10, 4) == 1.0
    assert trainer.lr_factor(4, 10, 4) == 1.0
    assert trainer.lr_factor(7, 10, 4) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert trainer.lr_factor(10, 10, 4) == pytest.approx(0.1) and trainer.lr_factor(50, 10, 4) == pytest.approx(0.1)
    assert trainer.lr_factor(2, 2, 2) == 1.0                         # total == warmup: no division by zero


def test_checkpoint_round_trip_pruning_and_refused_settings(tmp_path):
    tok, cfg, obj, exs = _objective(segment_embedding=True, keep_checkpoints=2)
    opt = torch.optim.AdamW(trainer.param_groups(obj, cfg))
    obj(collate([exs[:2]], tok.pad_token_id))["loss"].backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    for step in (1, 2, 3):
        path = trainer.save_checkpoint(tmp_path, step, obj, opt, cfg, {"tokens": 10 * step}, scaler=scaler)
    assert [p.name for p in checkpoints.ckpt_dirs(tmp_path)] == ["step-0000002", "step-0000003"]
    assert path == tmp_path / "checkpoints" / "step-0000003" and not list((tmp_path / "checkpoints").glob(".tmp*"))
    rng_then = torch.get_rng_state()
    torch.rand(3)
    _, _, obj2, _ = _objective(segment_embedding=True, keep_checkpoints=2, seed=7)
    opt2 = torch.optim.AdamW(trainer.param_groups(obj2, cfg))
    scaler2 = torch.amp.GradScaler("cpu")
    state = trainer.load_checkpoint(path, obj2, opt2, cfg, scaler=scaler2)
    assert state["step"] == 3 and state["tokens"] == 30 and state["config"]["segment_embedding"] is True
    assert torch.equal(torch.get_rng_state(), rng_then)
    for a, b in zip(obj.state_dict().values(), obj2.state_dict().values()):
        assert torch.equal(a, b)
    for p1, p2 in zip(obj.parameters(), obj2.parameters()):
        s1, s2 = opt.state.get(p1, {}), opt2.state.get(p2, {})
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert json.loads((path / "state.json").read_text())["scaler"] == scaler.state_dict() == scaler2.state_dict()
    for changed in (dict(batch_size=3), dict(seed=1), dict(max_length=64, batch_size=3)):
        other = cfg.model_copy(update=changed)
        with pytest.raises(DataforgeError) as err:
            trainer.load_checkpoint(path, obj2, opt2, other)
        keys = ", ".join(k for k in checkpoints.STATE_KEYS if k in changed)
        assert str(err.value) == (f"{path}: checkpoint was made with different {keys}; use a new output dir or "
                                  "--no-resume")
    assert checkpoints.ckpt_dirs(tmp_path / "nothing") == []


def test_input_filtering_counts_every_drop(tmp_path):
    recs = toy_records(4)
    recs[1] = recs[1].model_copy(update={"status": "rejected"})
    recs[2] = recs[2].model_copy(update={"status": "review"})
    path = tmp_path / "in.jsonl"
    write_records(path, recs)
    path.write_text(path.read_text() + "{broken\n")
    drops: dict[str, int] = {}
    everything, kept = trainer._read(path, TrainConfig(), tmp_path, drops)
    assert len(everything) == 4 and [r.id for r in kept] == [recs[0].id, recs[3].id]
    assert drops == {"bad_input_line": 1, "status_rejected": 1, "status_review": 1}
    drops = {}
    _, kept = trainer._read(path, TrainConfig(include_status=["accepted", "pending", "review"]), tmp_path, drops)
    assert len(kept) == 3 and drops == {"bad_input_line": 1, "status_rejected": 1}


def test_ewc_reference_texts(tmp_path):
    tok = tiny_tokenizer()
    fmt = PromptFormatter(tok, "auto", max_length=16)
    train_ex = encode_records(toy_records(5), fmt, TaskInfo(), {})
    assert trainer._reference_examples(TrainConfig(ewc_samples=3), fmt, TaskInfo(), train_ex) == train_ex[:3]
    text = tmp_path / "general.txt"
    text.write_text("the sea and the wind and the sun and the moon and a bird and a tree\nx\n"
                    "one two three\nfour five six\n", encoding="utf-8")
    got = trainer._reference_examples(TrainConfig(ewc_reference=str(text), ewc_samples=2, max_length=16), fmt,
                                      TaskInfo(), train_ex)
    assert len(got) == 2                                          # "x" is one token: too short; capped at 2
    first = tok("the sea and the wind and the sun and the moon and a bird and a tree", add_special_tokens=False)
    assert got[0].input_ids == first["input_ids"][:16] and len(got[0]) == 16
    assert got[1].input_ids == tok("one two three", add_special_tokens=False)["input_ids"]
    assert all(s == SEG_TEMPLATE for e in got for s in e.segments) and not any(any(e.learn) for e in got)
    one_line = trainer._reference_examples(TrainConfig(ewc_reference=str(text), ewc_samples=1), fmt, TaskInfo(),
                                           train_ex)
    assert len(one_line) == 1
    records = tmp_path / "general.jsonl"
    write_records(records, [Record(instruction="Say hi.", output="hi there")] * 3)
    from_records = trainer._reference_examples(TrainConfig(ewc_reference=str(records), ewc_samples=2),
                                               PromptFormatter(tok, "auto"), TaskInfo(), train_ex)
    assert len(from_records) == 2 and any(from_records[0].learn)
    with pytest.raises(DataforgeError) as err:
        trainer._reference_examples(TrainConfig(ewc_reference=str(tmp_path / "none.txt")), fmt, TaskInfo(), [])
    assert str(err.value) == f"{tmp_path / 'none.txt'}: EWC reference file not found"


def test_batch_plan_walks_epochs():
    tok = tiny_tokenizer()
    exs = encode_records(toy_records(10), PromptFormatter(tok, "auto"), TaskInfo(), {})
    cfg = TrainConfig(batch_size=3, pack=False, group_by_length=False)
    plan = trainer.BatchPlan(exs, cfg)
    assert len(plan) == 4                                          # 10 samples in batches of 3
    epoch0 = [e.record_id for g in range(4) for row in plan.rows(g) for e in row]
    epoch1 = [e.record_id for g in range(4, 8) for row in plan.rows(g) for e in row]
    assert sorted(epoch0) == sorted(epoch1) == sorted(e.record_id for e in exs) and epoch0 != epoch1
    assert [e.record_id for row in plan.rows(5) for e in row] == epoch1[3:6]
    again = trainer.BatchPlan(exs, cfg)
    assert [e.record_id for row in again.rows(6) for e in row] == epoch1[6:9]   # a function of (seed, g)
    fixed = trainer.BatchPlan(exs, cfg, shuffle=False)
    assert [e.record_id for row in fixed.rows(0) for e in row] == [e.record_id for e in exs[:3]]


def test_log_lines_of_lost_steps():
    assert trainer._log_step('{"step": 7, "loss": 1.0}') == 7
    assert trainer._log_step('{"loss": 1.0}') == 0
    assert trainer._log_step('{"step": 3, "lo') > 10 ** 9          # torn last line: always dropped
    assert trainer._log_step("[1, 2]") > 10 ** 9


def test_a_base_model_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(DataforgeError) as err:
        trainer.load_base(TrainConfig(model=str(tmp_path / "nope")))
    assert str(err.value) == (f"{tmp_path / 'nope'}: not a model directory (use a local HF model dir or 'smollm2'; "
                              "dataforge never downloads models)")
