"""DDP on CPU (gloo) with a tiny model: two `dataforge train` processes started with the environment
torchrun would give them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), minus the launcher's own start-up time.
Their step is exactly the step of one process accumulating the same two micro-batches."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from dataforge.train import TrainConfig, run_train  # noqa: E402
from train_helpers import run_two_processes, tiny_run_inputs  # noqa: E402


def test_two_process_gloo_run(tmp_path):
    base, data = tiny_run_inputs(tmp_path, 40)
    outputs = run_two_processes(["train", str(data), "-o", str(tmp_path / "run"), "--model", str(base),
                                 "--max-steps", "3", "--batch-size", "2", "--max-length", "128",
                                 "--segment-embedding", "--task-weighting", "uncertainty", "--no-progress",
                                 "--save-every", "1", "--keep-checkpoints", "3", "--max-grad-norm", "0"],
                                timeout=240)
    assert json.loads(outputs[0][0])["world_size"] == 2 and outputs[1][0].strip() == ""   # rank 0 reports
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3                                   # only rank 0 writes the log
    # each step consumed one micro-batch per process: more tokens than one process's batch alone
    assert all(e["tokens"] > 0 for e in log) and log[-1]["tokens"] == summary["tokens"]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    # the same step in one process: micro-batches g = 0, 1 accumulated (DDP gave rank r micro-batch r)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TrainConfig(max_steps=3, batch_size=2, max_length=128, segment_embedding=True, task_weighting="uncertainty",
                      grad_accum=2, save_every=1, keep_checkpoints=3, max_grad_norm=0.0)
    run_train(data, tmp_path / "one", cfg, model=AutoModelForCausalLM.from_pretrained(base),
              tokenizer=AutoTokenizer.from_pretrained(base), progress=False)
    one = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert abs(one[0]["loss"] - log[0]["loss"]) < 1e-6 and one[0]["tokens"] == log[0]["tokens"]
    a, b = (load_file(str(tmp_path / d / "checkpoints" / "step-0000001" / "optimizer.safetensors")) for d in ("run", "one"))
    # AdamW's first moment after one unclipped step is 0.1 * g: the gradients themselves, not only their direction
    moments = [k for k in a if k.endswith("exp_avg")]
    assert len(moments) > 10
    for k in moments:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-9), k
