"""DDP on CPU (gloo) with a tiny model: two `dataforge train` processes started with the environment
torchrun would give them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), minus the launcher's own start-up time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from dataforge.io import write_records  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402


def test_two_process_gloo_run(tmp_path):
    tok = tiny_tokenizer()
    base = tmp_path / "tiny"
    tiny_llama(len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    data = tmp_path / "final.jsonl"
    write_records(data, toy_records(40))
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DATAFORGE_PROGRESS": "0"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "dataforge", "train", str(data), "-o", str(tmp_path / "run"), "--model", str(base),
           "--max-steps", "3", "--batch-size", "2", "--max-length", "128", "--segment-embedding",
           "--task-weighting", "uncertainty", "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env | {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert json.loads(outputs[0][0])["world_size"] == 2 and outputs[1][0].strip() == ""   # rank 0 reports
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3                                   # only rank 0 writes the log
    # each step consumed one micro-batch per process: more tokens than one process's batch alone
    assert all(e["tokens"] > 0 for e in log) and log[-1]["tokens"] == summary["tokens"]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
