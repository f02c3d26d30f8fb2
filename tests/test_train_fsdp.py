"""FSDP2 on CPU (gloo) with a tiny model and three modifications: two processes compute the loss curve of
one process with twice the gradient accumulation, and resume from sharded and from gathered checkpoints
to the weights of an unbroken run. Rank 0 runs in this process, rank 1 is a `dataforge train` process with
torchrun's environment (no launcher start-up time)."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from dataforge.io import write_records  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402
from train_helpers import rank_one_beside_this_process, read_log, tiny_run_inputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
#: clipping runs (over sharded gradients) but never binds: a gradient off by a factor shows in AdamW's moments
CLIP = 1e6


#: the run's settings, shared by rank 0 (in this process) and rank 1 (a `dataforge train` process)
SETTINGS = dict(fsdp=True, max_steps=3, batch_size=2, max_length=128, eval_every=2, eval_fraction=0.1,
                keep_checkpoints=3, max_grad_norm=CLIP, segment_embedding=True, attention_bias=True, fusion=True,
                task_weighting="uncertainty")


def _flags(settings: dict) -> list[str]:
    out = []
    for k, v in settings.items():
        out += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
    return out


def _launch(data, out, base, monkeypatch, **extra):
    """Both ranks of a two-process FSDP run; rank 0 runs in this process (see rank_one_beside_this_process)."""
    settings = SETTINGS | extra
    with rank_one_beside_this_process(["train", str(data), "-o", str(out), "--model", str(base), "--no-progress",
                                       *_flags(settings)], monkeypatch):
        summary = run_train(data, out, TrainConfig(model=str(base), **settings), progress=False)
    assert summary == json.loads((out / "summary.json").read_text())
    return summary


def _weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def _rewind(src, dst, step):
    """A copy of a run as if it had crashed right after the checkpoint of `step`."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(dst / "model")
    shutil.rmtree(dst / "best", ignore_errors=True)
    (dst / "summary.json").unlink()


def test_two_fsdp_processes_equal_one_process_and_resume_sharded_and_full(tmp_path, monkeypatch):
    base, data = tiny_run_inputs(tmp_path, 30)

    a = _launch(data, tmp_path / "a", base, monkeypatch, save_every=1, grad_checkpointing=True)
    assert a["world_size"] == 2 and a["fsdp"] is True and a["ranks_in_sync"] is None and a["steps"] == 3
    ckpt = tmp_path / "a" / "checkpoints" / "step-0000001"
    assert (ckpt / "shards").is_dir() and not (ckpt / "weights.safetensors").exists()
    one = run_train(data, tmp_path / "one", TrainConfig(model=str(base), max_steps=3, batch_size=2, grad_accum=2,
                                                        max_length=128, eval_every=2, eval_fraction=0.1,
                                                        segment_embedding=True, attention_bias=True, fusion=True,
                                                        task_weighting="uncertainty", max_grad_norm=CLIP),
                    progress=False)
    la, l1 = read_log(tmp_path / "a"), read_log(tmp_path / "one")
    assert [e["step"] for e in la] == [1, 2, 3] and [e["tokens"] for e in la] == [e["tokens"] for e in l1]
    for ea, e1 in zip(la, l1):
        for key in ("loss", "lm", "instruction"):
            assert abs(ea[key] - e1[key]) <= 1e-5 * abs(e1[key]), (ea, e1)
    assert abs(la[1]["eval_loss"] - l1[1]["eval_loss"]) < 1e-5 and abs(a["eval_loss"] - one["eval_loss"]) < 1e-5
    wa, w1 = _weights(tmp_path / "a"), _weights(tmp_path / "one")
    assert wa.keys() == w1.keys() and any("segment_emb" in k for k in wa)
    assert max(float((wa[k] - w1[k]).abs().max()) for k in wa) < 1e-5

    # resume from the sharded checkpoint of step 1, now writing gathered ("full") checkpoints every step
    _rewind(tmp_path / "a", tmp_path / "b", 1)
    b = _launch(data, tmp_path / "b", base, monkeypatch, save_every=1, fsdp_checkpoint="full",
                grad_checkpointing=True)
    assert b["resumed_from"].endswith("step-0000001") and b["steps"] == 3
    assert (tmp_path / "b" / "checkpoints" / "step-0000002" / "weights.safetensors").exists()
    # resume from the gathered checkpoint of step 2
    _rewind(tmp_path / "b", tmp_path / "c", 2)
    c = _launch(data, tmp_path / "c", base, monkeypatch, save_every=1, fsdp_checkpoint="full")
    assert c["resumed_from"].endswith("step-0000002")
    # the gradients themselves, not only their direction (AdamW hides a scale): first moments after step 3
    final = "checkpoints/step-0000003/optimizer.safetensors"
    mb, m1 = (load_file(str(tmp_path / run / final)) for run in ("b", "one"))
    # (FSDP keeps a zero moment for parameters that never had a gradient, one process none)
    norms = [sorted(n for n in (float(v.norm()) for k, v in m.items() if k.endswith("exp_avg")) if n > 0)
             for m in (mb, m1)]
    assert len(norms[0]) == len(norms[1]) > 10
    assert all(abs(x - y) <= 1e-4 * y + 1e-9 for x, y in zip(*norms)), norms
    for run in ("b", "c"):
        w = _weights(tmp_path / run)
        assert max(float((w[k] - wa[k]).abs().max()) for k in wa) < 1e-6, run
        assert [e["loss"] for e in read_log(tmp_path / run)] == [e["loss"] for e in la]


def test_one_fsdp_step_equals_one_process_and_saves_shards_and_the_gathered_model(tmp_path, monkeypatch):
    """The short FSDP case (the mutation runs use it): a step, an evaluation, a sharded checkpoint (every rank
    writes its shard) and the gathered final model, against one process accumulating both micro-batches."""
    base, data = tiny_run_inputs(tmp_path, 30)
    s = _launch(data, tmp_path / "a", base, monkeypatch, max_steps=2, eval_every=1, save_every=1)
    assert (s["world_size"], s["fsdp"], s["ranks_in_sync"], s["steps"]) == (2, True, None, 2)
    shards = tmp_path / "a" / "checkpoints" / "step-0000001" / "shards"
    assert shards.is_dir() and len(list(shards.iterdir())) >= 2
    one = run_train(data, tmp_path / "one", TrainConfig(model=str(base), grad_accum=2,
                                                        **(SETTINGS | dict(max_steps=2, eval_every=1, fsdp=False))),
                    progress=False)
    la, l1 = read_log(tmp_path / "a"), read_log(tmp_path / "one")
    assert [(e["step"], e["tokens"]) for e in la] == [(e["step"], e["tokens"]) for e in l1] == \
        [(1, la[0]["tokens"]), (2, la[1]["tokens"])]
    assert abs(la[0]["eval_loss"] - l1[0]["eval_loss"]) < 1e-5 and abs(s["eval_loss"] - one["eval_loss"]) < 1e-5
    assert abs(la[1]["loss"] - l1[1]["loss"]) <= 1e-5 * abs(l1[1]["loss"])
    wa, w1 = _weights(tmp_path / "a"), _weights(tmp_path / "one")
    assert wa.keys() == w1.keys() and max(float((wa[k] - w1[k]).abs().max()) for k in wa) < 1e-5


def test_fsdp_refusals(tmp_path):
    from dataforge.errors import DataforgeError

    with pytest.raises(DataforgeError, match="ewc"):
        TrainConfig(fsdp=True, ewc_weight=0.1)
    with pytest.raises(DataforgeError, match="not supported yet"):
        TrainConfig(fsdp=True, lora=True)
    data = tmp_path / "d.jsonl"
    write_records(data, toy_records(8))
    tok = tiny_tokenizer()
    with pytest.raises(DataforgeError, match="WORLD_SIZE is 1"):
        run_train(data, tmp_path / "x", TrainConfig(fsdp=True, max_steps=1), model=tiny_llama(len(tok)),
                  tokenizer=tok, progress=False)
