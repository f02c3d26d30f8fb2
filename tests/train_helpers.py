"""Shared by the trainer tests: an interrupt injected at a given step, and two trainer processes started
with the environment torchrun would give them (without the launcher's start-up time)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys


def interrupt_at_step(monkeypatch, at: int) -> None:
    """Make the LR schedule raise KeyboardInterrupt (what Ctrl-C does) when step `at` starts."""
    import dataforge.train.trainer as trainer

    real = trainer.lr_factor

    def lr_factor(step, total, warmup):
        if step == at:
            raise KeyboardInterrupt
        return real(step, total, warmup)

    monkeypatch.setattr(trainer, "lr_factor", lr_factor)


def run_two_processes(args: list[str], timeout: float = 300) -> list[tuple[str, str]]:
    """`python -m dataforge <args>` as ranks 0 and 1 of a gloo group; returns (stdout, stderr) per rank and
    fails with both ranks' stderr when either exits non-zero."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DATAFORGE_PROGRESS": "0"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "dataforge", *args],
                              env=env | {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    return outputs


@contextlib.contextmanager
def rank_one_beside_this_process(args: list[str], monkeypatch, timeout: float = 300, script: str | None = None):
    """Rank 0 of a two-process gloo group in this (test) process, rank 1 as `python -m dataforge <args>`.

    Rank 0 calls run_train in-process, so mutation testing (which sees only this process) credits the
    multi-process paths to the test, and rank 1 inherits the environment that selects the same mutant.
    The group is joined here with a short timeout, so a rank that dies never hangs the other for gloo's
    default 30 minutes. `script` (Python source) runs as rank 1 instead of the CLI, with `args` as its
    sys.argv[1:]. Yields rank 1's Popen; on exit destroys the group and fails on rank 1's exit code (and, for
    the CLI, on any output from it)."""
    import datetime

    import torch.distributed as tdist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    rank1 = subprocess.Popen([sys.executable, *(["-c", script] if script else ["-m", "dataforge"]), *args],
                             env=os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DATAFORGE_PROGRESS": "0",
                                               "RANK": "1", "LOCAL_RANK": "1"} | env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for k, v in (env | {"RANK": "0", "LOCAL_RANK": "0"}).items():
        monkeypatch.setenv(k, v)
    ok = False
    try:
        tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2,
                                 timeout=datetime.timedelta(seconds=90))
        yield rank1
        ok = True
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
        for k in (*env, "RANK", "LOCAL_RANK"):
            monkeypatch.delenv(k)
        if not ok and rank1.poll() is None:
            rank1.kill()
        out, err = rank1.communicate(timeout=timeout)
    assert rank1.returncode == 0, err[-3000:]
    if script is None:
        assert out.strip() == "", out[-1000:]                   # only rank 0 reports
    rank1.output = out


def read_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def tiny_run_inputs(root, n_records: int = 40):
    """(model dir with a tiny Llama and its tokenizer, JSONL of toy records) under `root`."""
    from dataforge.io import write_records
    from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records

    tok = tiny_tokenizer()
    base = root / "tiny"
    tiny_llama(len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    data = root / "final.jsonl"
    write_records(data, toy_records(n_records))
    return base, data


def run_then_interrupt(records, root, cfg, monkeypatch, at: int) -> None:
    """Train `cfg` on a fresh tiny Llama unbroken into root/a, then into root/b interrupted as step `at`
    starts (the interrupted run must say so and save its checkpoint)."""
    import pytest

    from dataforge.errors import DataforgeError
    from dataforge.train import run_train
    from dataforge.train.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    run_train(records, root / "a", cfg, model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    interrupt_at_step(monkeypatch, at)
    tok_b = tiny_tokenizer()
    with pytest.raises(DataforgeError, match=f"interrupted at step {at}"):
        run_train(records, root / "b", cfg, model=tiny_llama(len(tok_b)), tokenizer=tok_b, progress=False)
    monkeypatch.undo()


def assert_cached_steps_match(model, decoder, ids: list[int], segs: list[int], steps: int, seg_id: int = 4,
                              temperature: float = 0.4) -> None:
    """Greedy-decode `steps` tokens through `decoder` (a CachedDecoder over `ids`); after each one the cached
    logits of the new position equal a full recomputation of the whole sequence (1e-5)."""
    import torch

    from dataforge.train.model import _single

    seq, seg = list(ids), list(segs)
    logits = decoder.out["logits"][0, -1]
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(logits.argmax())
            seq.append(nxt)
            seg.append(seg_id)
            logits = decoder.step(nxt)["logits"][0, -1]
            full = model(_single(seq, seg, temperature, torch.device("cpu")))["logits"][0, -1]
            assert float((logits - full).abs().max()) < 1e-5
