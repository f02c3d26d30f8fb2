"""scripts/gpu_smoke.sh: without a GPU it says so and exits cleanly; its `--device cpu` dry run executes every
check that does not need CUDA and reports the CUDA-only one as NOT RUN (never as passed)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

torch = pytest.importorskip("torch")

from conftest import REPO  # noqa: E402

SCRIPT = REPO / "scripts" / "gpu_smoke.sh"


def _run(*args):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=900, env=env, cwd=REPO)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the no-GPU message does not apply")
def test_without_a_gpu_it_says_so_and_exits_cleanly():
    res = _run()
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no CUDA GPU found" in res.stdout and "nothing checked" in res.stdout and "PASS" not in res.stdout
    # the scale checks (scripts/gpu_smoke_scale.sh) run from the same script and say why they did not run
    scale = res.stdout.split("== scale checks (scripts/gpu_smoke_scale.sh)\n", 1)[1]
    assert scale.strip() == "NOT RUN: no CUDA device"


def test_usage_error_stops_before_the_scale_checks():
    res = _run("--no-such-option")
    assert res.returncode == 2 and "scale checks" not in res.stdout


@pytest.mark.slow
def test_cpu_dry_run_passes_every_cpu_check(tmp_path):
    res = _run("--device", "cpu", "--keep", str(tmp_path / "work"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = res.stdout.split("\ncheck ", 1)[1]
    rows = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^(.+?)\s{2,}(PASS|FAIL|NOT RUN)\s", table, re.M)}
    assert rows == {"mixed precision (bf16 where native)": "PASS", "fp16 + gradient scaler step": "NOT RUN",
                    "attention-bias kernel vs eager": "PASS", "gradient checkpointing": "PASS",
                    "all modifications on: 6 steps": "PASS", "save -> load -> generate": "PASS",
                    "resume is exact (RNG state)": "PASS", "2-process DDP": "PASS"}
    assert "7 passed, 0 failed, 1 not run" in res.stdout
    assert res.stdout.rstrip().endswith("== scale checks (scripts/gpu_smoke_scale.sh)\nNOT RUN: --device cpu "
                                        "(QLoRA, FSDP over NCCL and cached generation on CUDA need a GPU)")
    assert (tmp_path / "work" / "all-mods" / "model" / "dataforge.json").exists()
