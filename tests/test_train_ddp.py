"""DDP on CPU (gloo) with a tiny model: two `dataforge train` processes started with the environment
torchrun would give them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), minus the launcher's own start-up time."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from train_helpers import run_two_processes, tiny_run_inputs  # noqa: E402


def test_two_process_gloo_run(tmp_path):
    base, data = tiny_run_inputs(tmp_path, 40)
    outputs = run_two_processes(["train", str(data), "-o", str(tmp_path / "run"), "--model", str(base),
                                 "--max-steps", "3", "--batch-size", "2", "--max-length", "128",
                                 "--segment-embedding", "--task-weighting", "uncertainty", "--no-progress"],
                                timeout=240)
    assert json.loads(outputs[0][0])["world_size"] == 2 and outputs[1][0].strip() == ""   # rank 0 reports
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3                                   # only rank 0 writes the log
    # each step consumed one micro-batch per process: more tokens than one process's batch alone
    assert all(e["tokens"] > 0 for e in log) and log[-1]["tokens"] == summary["tokens"]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
