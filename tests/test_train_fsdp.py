"""FSDP2 on CPU (gloo) with a tiny model and three modifications: two processes compute the loss curve of
one process with twice the gradient accumulation, and resume from sharded and from gathered checkpoints
to the weights of an unbroken run. Processes get torchrun's environment (no launcher start-up time)."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from dataforge.io import write_records  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402
from train_helpers import read_log, run_two_processes, tiny_run_inputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODS = ["--segment-embedding", "--attention-bias", "--fusion", "--task-weighting", "uncertainty"]
#: clipping runs (over sharded gradients) but never binds: a gradient off by a factor shows in AdamW's moments
CLIP = 1e6


def _launch(data, out, base, *extra):
    outputs = run_two_processes(["train", str(data), "-o", str(out), "--model", str(base), "--fsdp", "--max-steps",
                                 "3", "--batch-size", "2", "--max-length", "128", "--eval-every", "2",
                                 "--eval-fraction", "0.1", "--keep-checkpoints", "3", "--no-progress",
                                 "--max-grad-norm", str(CLIP), *MODS, *extra])
    return json.loads(outputs[0][0])


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


def test_two_fsdp_processes_equal_one_process_and_resume_sharded_and_full(tmp_path):
    base, data = tiny_run_inputs(tmp_path, 30)

    a = _launch(data, tmp_path / "a", base, "--save-every", "1", "--grad-checkpointing")
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
    b = _launch(data, tmp_path / "b", base, "--save-every", "1", "--fsdp-checkpoint", "full",
                "--grad-checkpointing")
    assert b["resumed_from"].endswith("step-0000001") and b["steps"] == 3
    assert (tmp_path / "b" / "checkpoints" / "step-0000002" / "weights.safetensors").exists()
    # resume from the gathered checkpoint of step 2
    _rewind(tmp_path / "b", tmp_path / "c", 2)
    c = _launch(data, tmp_path / "c", base, "--save-every", "1", "--fsdp-checkpoint", "full")
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
