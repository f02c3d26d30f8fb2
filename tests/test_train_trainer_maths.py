"""`run_train` against hand-computed figures: steps from epochs and accumulation, the learning rate of every
logged step, epoch fractions, tokens counted per step from the batch plan, when evals and log lines and
checkpoints happen and what they hold, the task counts behind inverse-frequency weighting, gradient clipping
and AdamW's betas seen through the saved moments, interrupts (what is saved and what is said), a finished run
started again, and the set-up helpers (environment, base model directory, SIGTERM, cross-process sums).
The 8-step tiny-Llama run is checked in one test (see the `run` fixture); everything runs in this process, so
mutmut sees it."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import warnings

import pytest

torch = pytest.importorskip("torch")

from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.io import read_records, write_records  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train import trainer  # noqa: E402
from dataforge.train.data import PromptFormatter, TaskInfo, encode_records, split_eval  # noqa: E402
from dataforge.train.losses import Objective  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402
from train_helpers import interrupt_at_step, rank_one_beside_this_process, read_log  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")]

# 24 records, 2 held out -> 22 train samples, unpacked rows of 2 -> 11 micro-batches an epoch; 2 micro-batches
# a step -> 5 steps an epoch (11 // 2); 1.5 epochs -> ceil(7.5) = 8 steps; warmup round(0.25 * 8) = 2 steps.
CFG = dict(epochs=1.5, pack=False, group_by_length=False, batch_size=2, grad_accum=2, warmup_ratio=0.25,
           log_every=2, eval_every=3, save_every=3, keep_checkpoints=10, save_minutes=0, max_length=128,
           lr=1e-3, weight_decay=0.01, eval_fraction=0.1, eval_max=2, task_weighting="inverse_frequency",
           grad_checkpointing=True)
TOTAL, WARMUP, PER_EPOCH = 8, 2, 5


def _factor(step: int) -> float:
    """lr_factor(step, 8, 2) written out: warmup (step+1)/2, then 0.1 + 0.45 * (1 + cos(pi * (step-2)/6))."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - WARMUP) / (TOTAL - WARMUP)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    write_records(path, toy_records(24))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The 8-step run. mutmut selects, for a mutant of run_train, the tests that called it: only the test
    whose set-up ran this fixture counts as calling it, so every check of this run sits in one test."""
    root = tmp_path_factory.mktemp("maths")
    data = root / "data.jsonl"                                        # two records without a task
    write_records(data, [r.model_copy(update={"task": None}) if i in (3, 4) else r
                         for i, r in enumerate(toy_records(24))])
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    assert model.config.use_cache is True
    cfg = TrainConfig(**CFG)
    seen_counts = []
    real_init = Objective.__init__

    def spy(self, model, cfg, n_tasks=0, counts=None, anchor=None):
        seen_counts.append(list(counts))
        real_init(self, model, cfg, n_tasks, counts, anchor)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(Objective, "__init__", spy)
        summary = run_train(data, root / "run", cfg, model=model, tokenizer=tok, progress=False)
    records = list(read_records(data))
    train_recs, _ = split_eval(records, 0.1, 2)
    tasks = sorted({r.task for r in train_recs if r.task})
    train_ex = encode_records(train_recs, PromptFormatter(tok, "auto", False, 128),
                              TaskInfo(tasks, cfg.task_kinds, cfg.temperature_by_kind), {})
    plan = trainer.BatchPlan(train_ex, cfg)
    step_tokens = [sum(len(e) for g in (2 * s, 2 * s + 1) for row in plan.rows(g) for e in row)
                   for s in range(TOTAL)]
    return dict(summary=summary, out=root / "run", warnings=[str(w.message) for w in caught], data=data,
                log=read_log(root / "run"), model=model, counts=seen_counts, train_ex=train_ex, tasks=tasks,
                step_tokens=step_tokens, cfg=cfg)


def _ckpt_state(out, step):
    return json.loads((out / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())


def test_unpacked_batches_grouped_by_length_hold_neighbours_in_length():
    """pack off, group_by_length on: within a chunk of 32 batches' worth the samples are sorted by length and cut
    into batches in that order (then the batches are shuffled), so each batch is a run of the sorted lengths."""
    tok = tiny_tokenizer()
    exs = encode_records(toy_records(10), PromptFormatter(tok, "auto"), TaskInfo(), {})
    plan = trainer.BatchPlan(exs, TrainConfig(batch_size=3, pack=False, group_by_length=True))
    got = sorted(tuple(sorted(len(e) for row in plan.rows(g) for e in row)) for g in range(len(plan)))
    lengths = sorted(len(e) for e in exs)
    assert got == sorted(tuple(lengths[k: k + 3]) for k in range(0, 10, 3))
    assert len(set(lengths)) > 4                                    # the toy samples differ in length


def test_the_schedule_stays_at_its_floor_past_the_end():
    assert trainer.lr_factor(3, 3, 2) == pytest.approx(0.1)            # one decay step: progress 1 at step 3
    assert trainer.lr_factor(2, 3, 2) == pytest.approx(1.0)
    assert trainer.lr_factor(9, 10, 7) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 2 / 3)))


def test_an_eight_step_run_against_hand_computed_figures(run):
    _steps_epochs_and_the_learning_rate_of_every_logged_step(run)
    _tokens_are_the_real_tokens_of_each_steps_micro_batches(run)
    _an_eval_is_logged_once_on_the_next_log_line_and_the_best_is_kept(run)
    _checkpoints_hold_their_step_the_best_so_far_and_the_optimizer_settings(run)
    _summary_of_the_run(run)
    _inverse_frequency_weights_come_from_the_training_samples(run)


def _steps_epochs_and_the_learning_rate_of_every_logged_step(run):
    log, s = run["log"], run["summary"]
    assert len(run["train_ex"]) == 22 and len(trainer.BatchPlan(run["train_ex"], run["cfg"])) == 11
    assert s["steps"] == s["total_steps"] == TOTAL
    assert [e["step"] for e in log] == [2, 4, 6, 8]                    # every 2nd step, and the last
    assert [e["epoch"] for e in log] == [0.4, 0.8, 1.2, 1.6]            # step / 5
    # the line of step s shows the rate its update used: set before the step, at schedule position s - 1
    assert [e["lr"] for e in log] == pytest.approx([1e-3 * _factor(s - 1) for s in (2, 4, 6, 8)], rel=1e-12)
    assert log[0]["lr"] == 1e-3 and log[2]["lr"] == pytest.approx(0.55e-3, rel=1e-12)
    assert all(e["tokens_per_s"] > 0 for e in log)


def _tokens_are_the_real_tokens_of_each_steps_micro_batches(run):
    log, s, per_step = run["log"], run["summary"], run["step_tokens"]
    cumulative = [sum(per_step[:n]) for n in range(1, TOTAL + 1)]
    assert [e["tokens"] for e in log] == [cumulative[n - 1] for n in (2, 4, 6, 8)]
    assert s["tokens"] == cumulative[-1]
    assert [_ckpt_state(run["out"], n)["tokens"] for n in (3, 6, 8)] == [cumulative[2], cumulative[5], cumulative[7]]
    assert s["tokens_per_s"] > 0 and s["resumed_from"] is None


def _an_eval_is_logged_once_on_the_next_log_line_and_the_best_is_kept(run):
    log, s, out = run["log"], run["summary"], run["out"]
    assert "eval_loss" not in log[0] and "eval_loss" not in log[3]
    assert {"eval_loss", "eval_lm_loss", "eval_by"} <= set(log[1]) and "eval_loss" in log[2]
    evals = {3: log[1]["eval_loss"], 6: log[2]["eval_loss"], 8: s["eval_loss"]}   # step 8 is the final eval
    assert log[1]["eval_loss"] != log[2]["eval_loss"] != s["eval_loss"]
    best_step = min(evals, key=evals.get)
    assert s["best_step"] == best_step and s["best_eval_loss"] == evals[best_step]
    assert "stopped_early" not in s and s["best_dir"] == str(out / "best")
    assert "eval_by" not in s and set(s["eval_loss_by"]) == set(log[1]["eval_by"]) == {"complexity"}
    assert sum(v["samples"] for v in s["eval_loss_by"]["complexity"].values()) == 2
    assert json.loads((out / "best" / "config.json").read_text())["model_type"] == "llama"
    assert s["final_loss"] == {k: v for k, v in log[-1].items() if k in ("lm", "instruction",
                                                                          "instruction_weighted", "loss")}
    assert set(s["final_loss"]) == {"lm", "instruction", "instruction_weighted", "loss"}


def _checkpoints_hold_their_step_the_best_so_far_and_the_optimizer_settings(run):
    out, log = run["out"], run["log"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003", "step-0000006",
                                                                      "step-0000008"]
    for n in (3, 6, 8):
        state = _ckpt_state(out, n)
        assert state["step"] == n
        groups = state["param_groups"]
        assert [g["lr"] for g in groups] == pytest.approx([1e-3 * _factor(n - 1)] * 2, rel=1e-12)
        assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
        assert all(g["betas"] == [0.9, 0.95] and g["eps"] == 1e-8 for g in groups)
        assert state["scaler"] == {}                                  # no fp16 loss scaler on the CPU
    best3 = _ckpt_state(out, 3)["best"]
    assert best3 == {"patience": 0, "best_loss": log[1]["eval_loss"], "best_step": 3, "evals_since_best": 0,
                     "stopped_at": None}
    best6 = _ckpt_state(out, 6)["best"]
    assert best6["best_step"] == (6 if log[2]["eval_loss"] < log[1]["eval_loss"] else 3)
    assert _ckpt_state(out, 8)["best"]["best_step"] == run["summary"]["best_step"]


def _summary_of_the_run(run):
    s, out = run["summary"], run["out"]
    assert json.loads((out / "summary.json").read_text()) == s
    assert (s["input"], s["output_dir"], s["model_dir"]) == (str(run["data"]), str(out), str(out / "model"))
    assert (s["records_in"], s["records_used"], s["train_samples"], s["eval_samples"]) == (24, 24, 22, 2)
    assert s["dropped"] == {} and s["tasks"] == run["tasks"] == ["classification", "generation", "math"]
    assert all(p.grad is None for p in run["model"].parameters())    # each step frees its gradients
    assert (s["world_size"], s["fsdp"], s["ranks_in_sync"], s["objective"], s["precision"]) == \
        (1, False, True, "sft", "float32")
    assert s["plain_hf"] is True and s["prompt_format"] == "inst" and "adapter" not in s and "merged_dir" not in s
    n_params = sum(p.numel() for p in run["model"].parameters())
    assert s["params"]["trainable"] == s["params"]["total"] == n_params
    assert s["base_check"]["dataforge_loss"] == s["base_check"]["model_loss"]
    first = [e for row in trainer.BatchPlan(run["train_ex"], run["cfg"]).rows(0) for e in row]   # micro-batch 0
    assert (s["base_check"]["samples"], s["base_check"]["tokens"]) == (2, sum(len(e) for e in first))
    assert 0 <= s["wall_s"] < 600
    meta = json.loads((out / "model" / "dataforge.json").read_text())
    assert (meta["prompt_format"], meta["tasks"], meta["base_model"], meta["max_length"]) == \
        ("inst", run["tasks"], "smollm2", 128)
    assert run["model"].config.use_cache is False                   # gradient checkpointing turns it off
    # ... through transformers 5's own name, not the deprecated alias (which warns)
    assert not [w for w in run["warnings"] if "gradient_checkpointing_enable" in w]


def _inverse_frequency_weights_come_from_the_training_samples(run):
    per_task = [sum(1 for e in run["train_ex"] if e.task_id == k) for k in range(3)]
    untasked = sum(1 for e in run["train_ex"] if e.task_id < 0)
    assert all(per_task) and untasked == 2 and sum(per_task) == 20
    assert run["counts"] == [per_task + [untasked]]                   # the last slot: samples without a task


def test_a_finished_run_started_again_redoes_nothing(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "again"
    shutil.copytree(run["out"], out)
    log_before = (out / "log.jsonl").read_text()
    last = out / "checkpoints" / "step-0000008"
    inode = last.stat().st_ino
    monkeypatch.setenv("DATAFORGE_PROGRESS", "1")
    tok = tiny_tokenizer()
    s = run_train(run["data"], out, TrainConfig(**CFG), model=tiny_llama(len(tok), seed=5), tokenizer=tok)
    assert "8/8" in capsys.readouterr().err                          # the bar starts where the run was
    assert last.stat().st_ino == inode                               # the last checkpoint is not written again
    assert s["steps"] == TOTAL and s["resumed_from"] == str(out / "checkpoints" / "step-0000008")
    assert s["tokens"] == run["summary"]["tokens"] and s["tokens_per_s"] is None
    assert (out / "log.jsonl").read_text() == log_before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003", "step-0000006",
                                                                      "step-0000008"]
    assert s["eval_loss"] == pytest.approx(run["summary"]["eval_loss"], rel=1e-6)   # the same weights
    # a checkpoint without a token count (older versions) resumes counting from 0
    state = json.loads((last / "state.json").read_text())
    del state["tokens"]
    (last / "state.json").write_text(json.dumps(state))
    tok = tiny_tokenizer()
    s = run_train(run["data"], out, TrainConfig(**CFG), model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert s["tokens"] == 0 and s["steps"] == TOTAL


# ------------------------------------------------------------------------------ one step, no eval


def test_one_clipped_step_shows_the_clip_and_adamws_betas_in_the_moments(data, tmp_path, capsys, monkeypatch):
    """After one AdamW step m = 0.1 g and v = 0.05 g^2 (betas 0.9, 0.95) with g the clipped gradient, whose
    global norm is max_grad_norm: so |m| = 0.1 * 0.05 and v = 5 m^2."""
    from safetensors.torch import load_file

    monkeypatch.setenv("DATAFORGE_PROGRESS", "1")
    tok = tiny_tokenizer()
    cfg = TrainConfig(max_steps=1, batch_size=4, max_length=128, max_grad_norm=0.05, eval_fraction=0.0,
                      save_minutes=0)
    model = tiny_llama(len(tok) + 8)                   # more embedding rows than tokens (as many real models)
    s = run_train(data, tmp_path / "one", cfg, model=model, tokenizer=tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + 8     # never shrunk to the tokenizer
    err = capsys.readouterr().err
    assert "train" in err and "1/1" in err and f"loss {s['final_loss']['loss']:.4f}" in err
    opt = load_file(str(tmp_path / "one" / "checkpoints" / "step-0000001" / "optimizer.safetensors"))
    m = [v for k, v in opt.items() if k.endswith(".exp_avg")]
    v = [opt[k[: -len("exp_avg")] + "exp_avg_sq"] for k in opt if k.endswith(".exp_avg")]
    assert len(m) > 10
    assert float(torch.sqrt(sum((x.double() ** 2).sum() for x in m))) == pytest.approx(0.1 * 0.05, rel=1e-4)
    for a, b in zip(m, v):
        assert torch.allclose(b.double(), 5 * a.double() ** 2, rtol=1e-4, atol=1e-16)
    assert s["eval_samples"] == 0 and "eval_loss" not in s and "best_step" not in s and "best_dir" not in s
    assert s["eval_loss_by"] == {}
    assert not (tmp_path / "one" / "best").exists() and (tmp_path / "one" / "model").is_dir()
    assert s["steps"] == s["total_steps"] == 1 and [e["step"] for e in read_log(tmp_path / "one")] == [1]
    state = json.loads((tmp_path / "one" / "checkpoints" / "step-0000001" / "state.json").read_text())
    assert [g["lr"] for g in state["param_groups"]] == [cfg.lr, cfg.lr]     # warmup max(1, round(0.03)) = 1 step
    tok = tiny_tokenizer()
    general = tmp_path / "general.txt"
    general.write_text("the sea and the wind\none two three four\n", encoding="utf-8")
    run_train(data, tmp_path / "free", cfg.model_copy(update={"max_grad_norm": 0.0, "ewc_weight": 0.01,
                                                              "ewc_reference": str(general), "ewc_samples": 2}),
              model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert read_log(tmp_path / "free")[0]["forgetting"] == 0.0           # EWC on, weights not moved yet
    free = load_file(str(tmp_path / "free" / "checkpoints" / "step-0000001" / "optimizer.safetensors"))
    norm = float(torch.sqrt(sum((v.double() ** 2).sum() for k, v in free.items() if k.endswith(".exp_avg"))))
    assert norm > 10 * 0.1 * 0.05                                    # 0 = no clipping: the raw gradient


# ------------------------------------------------------------------------------ interrupts


def test_an_interrupt_saves_the_step_reached_once_and_says_where(data, tmp_path, monkeypatch):
    cfg = TrainConfig(max_steps=4, batch_size=4, max_length=128, save_every=2, eval_fraction=0.0, save_minutes=0)
    before = signal.getsignal(signal.SIGTERM)
    for at, saved, names in ((3, 3, ["step-0000002", "step-0000003"]), (2, 2, ["step-0000002"])):
        out = tmp_path / f"at{at}"
        interrupt_at_step(monkeypatch, at)
        saves, real_save = [], trainer.save_checkpoint
        monkeypatch.setattr(trainer, "save_checkpoint", lambda o, step, *a, **k: saves.append(step) or
                            real_save(o, step, *a, **k))
        tok = tiny_tokenizer()
        with pytest.raises(DataforgeError) as err:
            run_train(data, out, cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
        monkeypatch.undo()
        assert saves == sorted({2, saved})                 # each step saved once: no second save of step 2
        assert str(err.value) == (f"interrupted at step {at}/4; the checkpoint of step {saved} is in "
                                  f"{out / 'checkpoints'}: run the same command again to resume")
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == names
        assert [e["step"] for e in read_log(out)] == list(range(1, at + 1))
        assert _ckpt_state(out, saved)["step"] == saved
        assert signal.getsignal(signal.SIGTERM) == before               # the SIGTERM handler is undone


def test_an_interrupt_while_the_weights_change_saves_nothing(data, tmp_path, monkeypatch):
    cfg = TrainConfig(max_steps=4, batch_size=4, max_length=128, save_every=0, save_minutes=0, eval_fraction=0.0)
    real_step, calls = torch.optim.AdamW.step, []

    def step(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    tok = tiny_tokenizer()
    with pytest.raises(DataforgeError) as err:
        run_train(data, tmp_path / "mid", cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert str(err.value).startswith("interrupted at step 2/4; the checkpoint of step 0 is in ")
    assert not (tmp_path / "mid" / "checkpoints").exists() or not list((tmp_path / "mid" / "checkpoints").iterdir())


def test_a_checkpoint_every_few_minutes(data, tmp_path, monkeypatch):
    """save_minutes: a checkpoint once that much time passed since the last one. The trainer's clock ticks
    5 minutes at every reading; after a save the next due check is two readings (10 minutes) later, exactly
    save_minutes = 10, so every step saves. None when save_minutes and save_every are 0."""
    from types import SimpleNamespace

    clock = [1000.0]

    def now():
        clock[0] += 300.0
        return clock[0]

    monkeypatch.setattr(trainer, "time", SimpleNamespace(time=now))
    tok = tiny_tokenizer()
    cfg = TrainConfig(max_steps=3, batch_size=4, max_length=128, save_every=0, save_minutes=10.0,
                      eval_fraction=0.0, keep_checkpoints=10)
    run_train(data, tmp_path / "timed", cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert sorted(p.name for p in (tmp_path / "timed" / "checkpoints").iterdir()) == \
        ["step-0000001", "step-0000002", "step-0000003"]
    # 20 minutes: four readings, i.e. every other step (the loop's start-up readings make step 1 the first);
    # with 60 / save_minutes instead of 60 * save_minutes every step would save
    run_train(data, tmp_path / "timed20", cfg.model_copy(update={"save_minutes": 20.0, "max_steps": 5}),
              model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert sorted(p.name for p in (tmp_path / "timed20" / "checkpoints").iterdir()) == \
        ["step-0000001", "step-0000003", "step-0000005"]
    monkeypatch.undo()
    tok = tiny_tokenizer()
    n_tok = len(tok)
    s = run_train(data, tmp_path / "untimed",
                  cfg.model_copy(update={"save_minutes": 0.0, "eval_fraction": 0.75, "eval_every": 1,
                                         "keep_best": False, "instruction_mask_prob": 0.3,
                                         "instruction_mask_mode": "drop", "max_length": 40}),
                  model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert sorted(p.name for p in (tmp_path / "untimed" / "checkpoints").iterdir()) == ["step-0000003"]
    assert s["best_step"] in (1, 2, 3) and "best_dir" not in s and not (tmp_path / "untimed" / "best").exists()
    assert len(tok) == n_tok                                         # dropping instruction tokens needs no mask token
    # 5 of the 24 records have prompts over 40 tokens: 3 of the 6 kept for training, 2 of the 18 held out;
    # the held-out ones are counted as dropped too: records in = records used + dropped
    assert (s["records_used"], s["train_samples"], s["eval_samples"]) == (19, 3, 16)
    assert s["dropped"] == {"prompt_too_long": 5}          # 3 in train, 2 in the eval split


# ------------------------------------------------------------------------------ set-up helpers


def test_the_process_layout_comes_from_torchruns_environment(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    d = trainer.Dist.from_env()
    assert (d.rank, d.world, d.local_rank, d.device, d.main) == (0, 1, 0, torch.device("cpu"), True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    d = trainer.Dist.from_env()
    assert (d.rank, d.world, d.local_rank, d.main) == (3, 1, 2, False)
    assert trainer.Dist(rank=0, world=2).main and not trainer.Dist(rank=1, world=2).main


def test_the_base_comes_from_the_embedded_smollm2_or_the_4_bit_loader_by_name(monkeypatch):
    """`smollm2` names the embedded model and `--qlora` hands the config and this process's device to the
    4-bit loader (both replaced here: the real ones load 135M weights or need CUDA)."""
    import dataforge.train.lora as lora
    import dataforge.train.smollm2 as smollm2

    monkeypatch.setattr(smollm2, "load_smollm2", lambda: ("smol", "tok"))
    calls = []
    monkeypatch.setattr(lora, "load_qlora_base", lambda cfg, device: calls.append((cfg, device)) or ("q", "t"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert trainer.load_base(TrainConfig(model="smollm2")) == ("smol", "tok")
    cfg = TrainConfig(model="smollm2", qlora=True)
    assert trainer.load_base(cfg) == ("q", "t") and calls == [(cfg, torch.device("cpu"))]
    with pytest.raises(DataforgeError, match="SMOLLM2: not a model directory"):
        trainer.load_base(TrainConfig(model="SMOLLM2"))


def test_a_run_shows_its_bar_by_default_and_seeds_the_global_generator(data, tmp_path, monkeypatch):
    """run_train shows a `train` bar over its steps unless told not to, and seeds Python's global `random`
    with the run's seed (for libraries that draw from it; dataforge's own draws use seeded generators)."""
    import contextlib
    import random

    import dataforge.progress as progress

    bars = []

    class Bar:
        def __init__(self):
            self.advanced, self.statuses = 0, []

        def advance(self, n=1):
            self.advanced += n

        def status(self, text):
            self.statuses.append(text)

    @contextlib.contextmanager
    def fake(description, total=None, unit="rec", **_):
        bars.append((description, total, unit, Bar()))
        yield bars[-1][3]

    monkeypatch.setattr(progress, "progress_bar", fake)
    random.seed(12345)
    tok = tiny_tokenizer()
    run_train(data, tmp_path / "r", TrainConfig(max_steps=3, batch_size=2, max_length=128, seed=7, log_every=2),
              model=tiny_llama(len(tok)), tokenizer=tok)
    assert random.random() == random.Random(7).random()
    assert [b[:3] for b in bars] == [("train", 3, "step")]
    bar = bars[0][3]
    assert bar.advanced == 3 and len(bar.statuses) == 2 and bar.statuses[0].startswith("loss ")
    run_train(data, tmp_path / "q", TrainConfig(max_steps=1, batch_size=2, max_length=128),
              model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert len(bars) == 1


def test_instruction_tokens_are_in_the_training_text(data, tmp_path):
    """With `inst_tokens` the prompts are wrapped in [INST] ... [/INST]: without weight decay only the rows of
    tokens that occur in the batches move, and the two new rows do (unused rows keep their values)."""
    from dataforge.train.model import add_inst_tokens

    tok = tiny_tokenizer(chat_template=True)          # the chat format: [INST] comes from inst_tokens alone
    ids = add_inst_tokens(tok)
    model = tiny_llama(len(tok))
    before = model.get_input_embeddings().weight.detach().clone()
    run_train(data, tmp_path / "r", TrainConfig(max_steps=2, batch_size=2, max_length=128, inst_tokens=True,
                                                 weight_decay=0.0, lr=1e-2), model=model, tokenizer=tok,
              progress=False)
    after = model.get_input_embeddings().weight.detach()
    assert ids == [400, 401] and after.shape == before.shape == (402, before.shape[1])
    moved = {i for i in range(402) if not torch.equal(after[i], before[i])}
    assert set(ids) <= moved and len(moved) < 402


def test_fp16_scales_the_loss_saves_the_scaler_and_resumes_it(data, tmp_path, monkeypatch):
    """The fp16 path a GPU without bf16 takes, on the CPU (autocast and GradScaler both run there): the loss is
    scaled by 2**16 and the gradients unscaled before AdamW (its first moments match a float32 run's to fp16
    precision, not 2**-16 of them), the scaler's state is in every checkpoint and a resumed run continues it."""
    from safetensors.torch import load_file

    cfg = TrainConfig(max_steps=4, batch_size=2, max_length=128, save_every=3, keep_checkpoints=5, max_grad_norm=0.0)
    tok = tiny_tokenizer()
    f32 = run_train(data, tmp_path / "f32", cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    monkeypatch.setattr(trainer, "choose_precision", lambda *a: torch.float16)
    root = tmp_path / "fp16"
    root.mkdir()
    from train_helpers import run_then_interrupt

    run_then_interrupt(data, root, cfg, monkeypatch, at=2)       # b: the interrupt saves step 2, scaler included
    monkeypatch.setattr(trainer, "choose_precision", lambda *a: torch.float16)
    tok_b = tiny_tokenizer()
    b = run_train(data, root / "b", cfg, model=tiny_llama(len(tok_b)), tokenizer=tok_b, progress=False)
    a = json.loads((root / "a" / "summary.json").read_text())
    assert (f32["precision"], a["precision"], b["precision"]) == ("float32", "float16", "float16")
    assert b["resumed_from"].endswith("step-0000002")

    def scaler(run, step):
        return json.loads((root / run / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())["scaler"]

    assert [scaler("a", 3)["_growth_tracker"], scaler("a", 4)["_growth_tracker"]] == [3, 4]   # no overflow, no skip
    assert scaler("b", 2)["_growth_tracker"] == 2 and scaler("a", 4)["scale"] == 65536.0
    assert scaler("b", 4) == scaler("a", 4)                                  # b continued at 2, not at 0
    assert json.loads((tmp_path / "f32" / "checkpoints" / "step-0000003" / "state.json").read_text())["scaler"] == {}
    m16, m32 = (load_file(str(r / "checkpoints" / "step-0000003" / "optimizer.safetensors"))
                for r in (root / "a", tmp_path / "f32"))
    norms = [(float(m16[k].norm()), float(m32[k].norm())) for k in m32 if k.endswith("exp_avg")]
    assert len(norms) > 10 and all(abs(x - y) <= 0.05 * y + 1e-9 for x, y in norms), norms
    wa, wb = (load_file(str(root / r / "model" / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("name", ["activation_checkpointing_enable", "gradient_checkpointing_enable"])
def test_gradient_checkpointing_by_either_transformers_name_gives_the_same_steps(name, data, tmp_path, monkeypatch):
    """transformers 5 names it `activation_checkpointing_enable`, 4 `gradient_checkpointing_enable` (hidden
    here from the newer name to take the older branch): either way the layers recompute, non-reentrant,
    and the steps equal a run without checkpointing."""
    import transformers

    cfg = dict(max_steps=2, batch_size=2, max_length=128, segment_embedding=True, fusion=True)
    tok = tiny_tokenizer()
    plain = run_train(data, tmp_path / "plain", TrainConfig(**cfg), model=tiny_llama(len(tok)), tokenizer=tok,
                      progress=False)
    seen = []
    real = transformers.PreTrainedModel._activation_checkpointing_enable      # what both names end in

    def spy(self, **kwargs):
        seen.append(kwargs)
        return real(self, *kwargs.values())

    if name == "gradient_checkpointing_enable":      # transformers 4: the newer name does not exist
        monkeypatch.delattr(transformers.PreTrainedModel, "activation_checkpointing_enable")

    monkeypatch.setattr(transformers.PreTrainedModel, name, spy)
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    ckpt = run_train(data, tmp_path / "ckpt", TrainConfig(grad_checkpointing=True, **cfg), model=model,
                     tokenizer=tok, progress=False)
    key = "activation_checkpointing_kwargs" if name.startswith("activation") else "gradient_checkpointing_kwargs"
    assert seen == [{key: {"use_reentrant": False}}] and model.config.use_cache is False
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert ckpt["final_loss"] == plain["final_loss"]


def test_forgetting_penalties_and_the_fisher_only_when_asked(data, tmp_path, monkeypatch):
    """L2-SP alone (any weight above 0) adds the forgetting term and estimates no Fisher; EWC estimates it
    on the reference records file, with their tasks known, `ewc_samples` of them."""
    import dataforge.train.losses as losses

    calls = []
    real = losses.estimate_fisher

    def spy(model, batches):
        batches = list(batches)
        calls.append(len(batches))
        return real(model, iter(batches))

    monkeypatch.setattr(trainer, "estimate_fisher", spy)
    tok = tiny_tokenizer()
    base = dict(max_steps=1, batch_size=2, max_length=128)
    s = run_train(data, tmp_path / "l2sp", TrainConfig(l2sp_weight=0.5, **base), model=tiny_llama(len(tok)),
                  tokenizer=tok, progress=False)
    assert "forgetting" in s["final_loss"] and calls == []
    none = run_train(data, tmp_path / "none", TrainConfig(**base), model=tiny_llama(len(tok)), tokenizer=tok,
                     progress=False)
    assert "forgetting" not in none["final_loss"] and calls == []
    ref = tmp_path / "ref.jsonl"
    write_records(ref, toy_records(5))
    tok = tiny_tokenizer()
    e = run_train(data, tmp_path / "ewc", TrainConfig(ewc_weight=0.5, ewc_reference=str(ref), ewc_samples=3, **base),
                  model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert "forgetting" in e["final_loss"] and calls == [3]


def test_an_epoch_of_one_step(tmp_path):
    """4 records, rows of 2, 2 micro-batches a step: one step an epoch, so 1 epoch is 1 step (not a floor of 2)
    and 3 epochs are 3 steps, each a whole epoch."""
    path = tmp_path / "d.jsonl"
    write_records(path, toy_records(4))
    tok = tiny_tokenizer()
    for epochs, steps in ((1, 1), (3, 3), (0.5, 1)):
        s = run_train(path, tmp_path / f"e{epochs}", TrainConfig(epochs=epochs, batch_size=2, grad_accum=2, pack=False,
                                                                  eval_fraction=0.0, max_length=128, log_every=1),
                      model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
        assert (s["train_samples"], s["total_steps"], s["steps"]) == (4, steps, steps)
        assert [e["epoch"] for e in read_log(tmp_path / f"e{epochs}")] == [float(i) for i in range(1, steps + 1)]


def test_without_resume_a_run_starts_over_and_early_stopping_survives_a_resume(data, tmp_path, monkeypatch):
    """`resume=False` ignores the checkpoints already there; a resumed run keeps counting evals without
    improvement towards the patience it is given (eval losses scripted: best at step 2, stop at step 4)."""
    from safetensors.torch import load_file

    losses = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.6, 5: 2.7, 6: 2.8}
    monkeypatch.setattr(trainer, "evaluate", lambda objective, evalset, device, autocast, rank, world, fsdp:
                        {"eval_loss": losses.get(evalset.step[0], 9.0)})
    tok = tiny_tokenizer()
    cfg = TrainConfig(max_steps=6, batch_size=2, max_length=128, eval_every=1, save_every=1, keep_checkpoints=10,
                      early_stop_patience=2, keep_best=False)

    def run(out, **update):
        evalset_step = [0]
        real_build = trainer.EvalSet.build

        def build(*a, **k):
            es = real_build(*a, **k)
            es.step = evalset_step
            return es

        monkeypatch.setattr(trainer.EvalSet, "build", build)
        real_lr = trainer.lr_factor

        def lr_factor(step, total, warmup):
            evalset_step[0] = step + 1                   # the eval after this step sees its number
            return real_lr(step, total, warmup)

        monkeypatch.setattr(trainer, "lr_factor", lr_factor)
        return run_train(data, tmp_path / out, cfg.model_copy(update=update), model=tiny_llama(len(tok)),
                         tokenizer=tok, progress=False)

    whole = run("whole")
    assert whole["steps"] == 4 and whole["stopped_early"]["step"] == 4 and whole["best_step"] == 2
    shutil.copytree(tmp_path / "whole", tmp_path / "part")
    for ckpt in (tmp_path / "part" / "checkpoints").iterdir():
        if ckpt.name != "step-0000003":
            shutil.rmtree(ckpt)                          # as if killed after the checkpoint of step 3
    part = run("part")
    assert part["resumed_from"].endswith("step-0000003") and part["steps"] == 4
    assert part["stopped_early"] == whole["stopped_early"]
    again = run("whole", resume=False, early_stop_patience=0, max_steps=2)
    assert again["resumed_from"] is None and again["steps"] == 2 and "stopped_early" not in again
    assert sorted({e["step"] for e in read_log(tmp_path / "whole")}) == [1, 2]   # the old run's lines are gone
    fresh = run("fresh", resume=False, early_stop_patience=0, max_steps=2)
    wa, wf = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("whole", "fresh"))
    assert all(torch.equal(wa[k], wf[k]) for k in wf)


def test_batches_move_to_the_given_device():
    """`_to` moves every tensor to the device it is given (the meta device stands in for a GPU here)."""
    moved = trainer._to({"input_ids": torch.ones(2, 3, dtype=torch.long), "w": torch.ones(2)}, torch.device("meta"))
    assert {k: (v.device.type, v.dtype, tuple(v.shape)) for k, v in moved.items()} == \
        {"input_ids": ("meta", torch.long, (2, 3)), "w": ("meta", torch.float32, (2,))}


RANK_ONE_SYNC = """
import sys, torch, torch.distributed as tdist
from dataforge.train import trainer
tdist.init_process_group("gloo")
for value in sys.argv[1:]:
    m = torch.nn.Module()
    m.p = torch.nn.Parameter(torch.tensor([float(value), 0.0], dtype=torch.float64))
    print(trainer._ranks_in_sync(m, trainer.Dist(rank=1, world=2)))
tdist.destroy_process_group()
"""


def test_the_sync_check_compares_both_ranks_weights_in_float64(monkeypatch):
    """Two real ranks (rank 1 a subprocess): equal sums are in sync, sums 1e-8 apart are not (float32 would
    round them together), and the tolerance is 1e-9 of the larger sum, at least 1e-9: 5e-7 apart at 1000 is in
    sync, and so is exactly 1e-9 apart near 0, but not 1.5e-9."""
    rank0 = [1.0, 1.0, 1000.0, 1000.0, -3.0, 0.0, 0.0]
    rank1 = [1.0, 1.0 + 1e-8, 1000.0 + 5e-7, 1000.0 + 2e-6, -3.0 - 1e-6, -1e-9, -1.5e-9]   # (1e-9: the bound itself)
    with rank_one_beside_this_process([repr(v) for v in rank1], monkeypatch, script=RANK_ONE_SYNC) as proc:
        got = []
        for value in rank0:
            m = torch.nn.Module()
            m.p = torch.nn.Parameter(torch.tensor([value, 0.0], dtype=torch.float64))
            got.append(trainer._ranks_in_sync(m, trainer.Dist(rank=0, world=2)))
    assert got == [True, False, True, False, False, True, False]
    assert proc.output.split() == [str(g) for g in got]          # both ranks reach the same verdict


def test_a_base_model_directory_loads_in_float32_with_its_own_or_the_given_tokenizer(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok)).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    other = tiny_tokenizer(vocab_size=300)
    other.save_pretrained(tmp_path / "tok")
    loaded, ltok = trainer.load_base(TrainConfig(model=str(tmp_path / "base")))
    assert loaded.dtype == torch.float32 and loaded.config.model_type == "llama"
    w = model.state_dict()["model.embed_tokens.weight"]
    assert torch.equal(loaded.state_dict()["model.embed_tokens.weight"], w.float())
    assert len(ltok) == len(tok) and ltok("one two")["input_ids"] == tok("one two")["input_ids"]
    _, given = trainer.load_base(TrainConfig(model=str(tmp_path / "base"), tokenizer=str(tmp_path / "tok")))
    assert len(given) == len(other) != len(tok)
    write_records(tmp_path / "d.jsonl", toy_records(4))
    with pytest.raises(DataforgeError) as err:
        run_train(tmp_path / "d.jsonl", tmp_path / "r", TrainConfig(), model=model)
    assert str(err.value) == "run_train(model=...) needs the tokenizer too"


def test_sigterm_takes_the_interrupt_path_in_the_main_thread_only():
    before = signal.getsignal(signal.SIGTERM)
    undo = trainer._sigterm_as_interrupt()
    try:
        # a handler must be in place before the signal is sent: without one SIGTERM would end this process
        assert signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL, signal.SIG_IGN, None)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):                 # the handler runs at the next bytecode boundary
                pass
    finally:
        undo()
    assert signal.getsignal(signal.SIGTERM) is before
    got = []
    t = threading.Thread(target=lambda: got.append(trainer._sigterm_as_interrupt()))
    t.start()
    t.join()
    assert signal.getsignal(signal.SIGTERM) is before and got[0]() is None


def test_cross_process_sums_and_the_sync_check_in_a_one_process_group(tmp_path):
    """The helpers of a multi-process run, on a real gloo group of one process: the sums come back under
    their own names and the token count last; a single process is always in sync."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        d = trainer.Dist(rank=0, world=2)
        sums, tokens = trainer._all_reduce_sum({"loss": 0.1, "lm": 1 / 3, "instruction": 2.5}, 2 ** 25 + 1, d)
        assert sums == {"instruction": 2.5, "lm": 1 / 3, "loss": 0.1}           # float64: exact, not float32's
        assert tokens == 2 ** 25 + 1 and isinstance(tokens, int)
        _, _, obj, _ = _objective()
        assert trainer._ranks_in_sync(obj, d) is True
        assert trainer._ranks_in_sync(obj, trainer.Dist()) is True
    finally:
        tdist.destroy_process_group()


def _objective():
    from dataforge.train.model import InstructModel
    from dataforge.train.tiny import tiny_model

    tok = tiny_tokenizer()
    c = TrainConfig()
    return tok, c, Objective(InstructModel(tiny_model("llama", len(tok)), c.mods_dict(), 0), c, 0), None


def test_ewc_reference_files_by_suffix_and_text_lines_without_special_tokens(tmp_path):
    """.json and .parquet files are records like .jsonl (a record without an answer is dropped, not fatal);
    other files are text lines, tokenised without the BOS a real tokenizer would add, kept from 2 tokens."""
    from tokenizers import processors

    from dataforge.records import Record

    tok = tiny_tokenizer()
    bos = tok.convert_tokens_to_ids("<s>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok("one")["input_ids"][0] == bos                        # this tokenizer adds BOS unless told not to
    fmt = PromptFormatter(tok, "auto", max_length=64)
    recs = [Record(instruction="Say hi.", output=""), Record(instruction="Say hi.", output="hi there"),
            Record(instruction="Say bye.", output="bye now")]
    for suffix in (".json", ".parquet"):
        path = tmp_path / f"ref{suffix}"
        write_records(path, recs, fmt="parquet" if suffix == ".parquet" else "record")
        got = trainer._reference_examples(TrainConfig(ewc_reference=str(path), ewc_samples=3), fmt, TaskInfo(), [])
        assert len(got) == 2 and all(any(e.learn) for e in got), suffix
    two = [t for t in ("ab", "one two", "sea wind") if len(tok(t, add_special_tokens=False)["input_ids"]) == 2][0]
    text = tmp_path / "ref.txt"
    text.write_text(f"{two}\nthe sea and the wind\n", encoding="utf-8")
    got = trainer._reference_examples(TrainConfig(ewc_reference=str(text), ewc_samples=5), fmt, TaskInfo(), [])
    assert [e.input_ids for e in got] == [tok(two, add_special_tokens=False)["input_ids"],
                                          tok("the sea and the wind", add_special_tokens=False)["input_ids"]]


def test_throughput_and_wall_time_by_the_trainers_clock(data, tmp_path, monkeypatch):
    """The trainer's clock made to tick 1.001 s at every reading: t_start, t_saved, t_loop, t_window are
    readings 1-4, the log line of step 2 is reading 5 (tokens of steps 1-2 over one tick), of step 3 reading 6
    (step 3's over one tick), the loop ends at 7 (all tokens over 4 ticks), the wall time is 8 - 1 ticks.
    Steps of one micro-batch of 8 rows of at most 40 tokens: 5 of the 24 records have prompts too long for
    that and are dropped, long answers are cut; 19 samples -> micro-batches of 8, 8, 3 -> 3 steps an epoch,
    so the epoch of step 2 is 0.6667."""
    from types import SimpleNamespace

    readings, clock = [], [0.0]

    def tick():
        clock[0] += 1.001
        readings.append(clock[0])
        return clock[0]

    monkeypatch.setattr(trainer, "time", SimpleNamespace(time=tick))
    tok = tiny_tokenizer()
    cfg = TrainConfig(max_steps=3, batch_size=8, pack=False, group_by_length=False, max_length=40, log_every=2,
                      eval_fraction=0.0, save_every=0, save_minutes=0)
    s = run_train(data, tmp_path / "new" / "clock", cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert len(readings) == 8
    t = [None] + readings                                              # t[k]: the k-th reading
    tasks = TaskInfo(["classification", "generation", "math"], cfg.task_kinds, cfg.temperature_by_kind)
    examples = encode_records(read_records(data), PromptFormatter(tok, "auto", False, 40), tasks, {})
    assert len(examples) == s["train_samples"] == 19 and max(len(e) for e in examples) == 40
    assert s["dropped"] == {"prompt_too_long": 5}
    plan = trainer.BatchPlan(examples, cfg)
    per_step = [sum(len(e) for row in plan.rows(g) for e in row) for g in range(3)]
    log = read_log(tmp_path / "new" / "clock")                        # parent folders are made too
    assert [(e["step"], e["epoch"], e["tokens"], e["tokens_per_s"]) for e in log] == [
        (2, 0.6667, per_step[0] + per_step[1], round((per_step[0] + per_step[1]) / (t[5] - t[4]), 1)),
        (3, 1.0, sum(per_step), round(per_step[2] / (t[6] - t[5]), 1))]
    assert s["tokens"] == sum(per_step) and s["tokens_per_s"] == round(sum(per_step) / (t[7] - t[3]), 1)
    assert s["wall_s"] == round(t[8] - t[1], 2) == 7.01

def test_records_dropped_from_the_eval_split_are_counted_too(tmp_path):
    """An empty answer is dropped and counted wherever the id hash puts it, eval included."""
    records = toy_records(16) + [r.model_copy(update={"output": " ", "instruction": f"empty {i}"})
                                 for i, r in enumerate(toy_records(8))]
    train, held = split_eval(records, 0.25, 100)
    empty_held = sum(not r.output.strip() for r in held)
    assert 0 < empty_held < len(held)                        # the case this test is about
    path = tmp_path / "d.jsonl"
    write_records(path, records)
    tok = tiny_tokenizer()
    s = run_train(path, tmp_path / "r", TrainConfig(max_steps=1, batch_size=2, max_length=128, eval_fraction=0.25,
                                                     eval_max=100), model=tiny_llama(len(tok)), tokenizer=tok,
                  progress=False)
    assert s["dropped"] == {"empty_output": 8}
    assert (s["train_samples"], s["eval_samples"]) == (len(train) - (8 - empty_held), len(held) - empty_held)


def test_refusals_before_training(data, tmp_path):
    tok = tiny_tokenizer()
    rejected = tmp_path / "rejected.jsonl"
    write_records(rejected, [r.model_copy(update={"status": "rejected"}) for r in toy_records(3)])
    with pytest.raises(DataforgeError) as err:
        run_train(rejected, tmp_path / "r", TrainConfig(), model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert str(err.value) == f"{rejected}: no usable training records (dropped: {{'status_rejected': 3}})"
    empty = tmp_path / "empty.jsonl"
    write_records(empty, [r.model_copy(update={"output": " "}) for r in toy_records(2)])
    with pytest.raises(DataforgeError) as err:
        run_train(empty, tmp_path / "r", TrainConfig(), model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert str(err.value) == f"{empty}: no usable training records (dropped: {{'empty_output': 2}})"
    with pytest.raises(DataforgeError) as err:
        run_train(data, tmp_path / "r", TrainConfig(qlora=True), model=tiny_llama(len(tok)), tokenizer=tok)
    assert str(err.value) == "--qlora loads the base itself in 4-bit: give cfg.model, not run_train(model=...)"


def test_the_configured_temperatures_are_the_heads_targets(data, tmp_path):
    """The temperature head's loss at step 1 (same start, same batch) changes with temperature_by_kind: the
    configured temperatures, not the defaults, are its targets."""
    losses = []
    for temps in (None, {"factual": 1.5, "reasoning": 1.5, "creative": 1.5}):
        tok = tiny_tokenizer()
        cfg = TrainConfig(max_steps=1, batch_size=4, max_length=128, eval_fraction=0.0, temperature_head=True,
                          **({"temperature_by_kind": temps} if temps else {}))
        run_train(data, tmp_path / str(len(losses)), cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
        losses.append(read_log(tmp_path / str(len(losses)))[0]["temperature"])
    assert losses[0] > 0 and losses[1] > 0 and abs(losses[0] - losses[1]) > 1e-3


def test_bf16_on_the_cpu_trains_under_autocast_and_says_so(data, tmp_path, monkeypatch):
    """The same first step in float32, bf16 and fp16 (forced): three slightly different losses (each under its
    own autocast dtype: bf16 keeps 8 mantissa bits, fp16 11), all within 2% of float32's."""
    tok = tiny_tokenizer()

    def first_loss(name, **kw):
        s = run_train(data, tmp_path / name, TrainConfig(max_steps=1, batch_size=4, max_length=128,
                                                         eval_fraction=0.0, **kw),
                      model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
        return s["precision"], s["final_loss"]["loss"]

    p32, l32 = first_loss("f32", bf16="off")
    pbf, lbf = first_loss("bf16", bf16="on")
    monkeypatch.setattr(trainer, "choose_precision", lambda *a: torch.float16)
    p16, l16 = first_loss("fp16")
    assert (p32, pbf, p16) == ("float32", "bfloat16", "float16")
    assert len({l32, lbf, l16}) == 3 and all(abs(x - l32) <= 0.02 * l32 for x in (lbf, l16)), (l32, lbf, l16)
    assert abs(l16 - l32) < abs(lbf - l32)                     # fp16 is the closer of the two
