"""DDP on CPU (gloo) with a tiny model: rank 0 runs `run_train` in this process and rank 1 is a
`dataforge train` process started with the environment torchrun would give it (RANK, WORLD_SIZE,
MASTER_ADDR/PORT), minus the launcher's own start-up time. Their step is exactly the step of one process
accumulating the same two micro-batches."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from dataforge.train import TrainConfig, run_train  # noqa: E402
from train_helpers import rank_one_beside_this_process, tiny_run_inputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_process_gloo_run(tmp_path, monkeypatch):
    base, data = tiny_run_inputs(tmp_path, 40)
    common = dict(max_steps=3, batch_size=2, max_length=128, segment_embedding=True, task_weighting="uncertainty",
                  save_every=1, keep_checkpoints=3, max_grad_norm=0.0)
    with rank_one_beside_this_process(["train", str(data), "-o", str(tmp_path / "run"), "--model", str(base),
                                       "--max-steps", "3", "--batch-size", "2", "--max-length", "128",
                                       "--segment-embedding", "--task-weighting", "uncertainty", "--no-progress",
                                       "--save-every", "1", "--keep-checkpoints", "3", "--max-grad-norm", "0",
                                       "--report-to", "tensorboard"],
                                      monkeypatch):
        summary = run_train(data, tmp_path / "run", TrainConfig(model=str(base), report_to="tensorboard", **common),
                            progress=False)
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1   # rank 0 reports
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]            # only rank 0 writes the log, once per step
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    # the same steps in one process: micro-batches g = 2s, 2s+1 accumulated (DDP gave rank r micro-batch 2s+r)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    one_s = run_train(data, tmp_path / "one", TrainConfig(grad_accum=2, **common),
                      model=AutoModelForCausalLM.from_pretrained(base),
                      tokenizer=AutoTokenizer.from_pretrained(base), progress=False)
    one = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    # the logged terms are the sums of both ranks' shares, the tokens both ranks' tokens, at every step
    for e2, e1 in zip(log, one, strict=True):
        assert e2["tokens"] == e1["tokens"] and e2["epoch"] == e1["epoch"]
        for key in ("loss", "lm", "instruction"):
            assert abs(e2[key] - e1[key]) <= 1e-5 * abs(e1[key]), (key, e2, e1)
    assert summary["tokens"] == one_s["tokens"] and summary["total_steps"] == one_s["total_steps"] == 3
    assert abs(summary["eval_loss"] - one_s["eval_loss"]) < 1e-5
    a, b = (load_file(str(tmp_path / d / "checkpoints" / "step-0000001" / "optimizer.safetensors")) for d in ("run", "one"))
    # AdamW's first moment after one unclipped step is 0.1 * g: the gradients themselves, not only their direction
    moments = [k for k in a if k.endswith("exp_avg")]
    assert len(moments) > 10
    for k in moments:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-9), k
    wa, w1 = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("run", "one"))
    assert wa.keys() == w1.keys() and max(float((wa[k] - w1[k]).abs().max()) for k in wa) < 1e-5
