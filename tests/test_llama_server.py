"""dataforge against real server software: llama.cpp's OpenAI-compatible server (llama-cpp-python[server])
serving the embedded SmolLM2-135M GGUF. One server for the module, one thread (the machine is shared);
each test sends a handful of short requests. What the loopback server cannot prove shows up here:
llama-cpp-python refuses ``response_format: json_schema`` (it takes ``json_object`` + ``schema``), its
``/v1/models`` says nothing about the model's size, and its logprobs have their own shape."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records
from dataforge.llm import BackendConfig, GenParams, make_llm, run_sync
from dataforge.llm.config import default_local_model

from conftest import EXAMPLES, REPO
from server_helpers import free_port, served

pytestmark = pytest.mark.slow
ALIAS = "smollm2-135m-instruct"
runner = CliRunner()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "dataforge.testing.llama_server", "--model", str(default_local_model()),
           "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
           "--n_threads_batch", "1"]
    with served(cmd, port, ALIAS, tmp_path_factory.mktemp("llama-server") / "server.log", env, 120) as base:
        yield base


def _backend(base: str, **kw) -> list[str]:
    return ["--base-url", base, "--model", ALIAS, "--concurrency", "2", "--timeout", "120", *kw.get("extra", [])]


def test_chat_and_profile(llama_server, tmp_path):
    res = runner.invoke(app, ["chat", "Name one colour.", *_backend(llama_server), "--max-tokens", "12",
                              "--temperature", "0", "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    assert "openai:smollm2-135m-instruct" in res.output and "completion_tokens" in res.output
    llm = make_llm(BackendConfig(base_url=llama_server, model=ALIAS, no_cache=True))
    # llama-cpp-python's /v1/models names no size: the alias's own name decides
    assert llm.profile_decision.as_dict() == {"profile": "fewshot",
                                              "reason": "name 'smollm2-135m-instruct' is of the small smollm2 family (135M)"}


def test_structured_output_steps_down_to_the_servers_form(llama_server, caplog):
    from dataforge.llm.structured import generate_structured
    from dataforge.quality.judges import Verdict

    llm = make_llm(BackendConfig(base_url=llama_server, model=ALIAS, no_cache=True))
    msgs = [{"role": "user", "content": "Is the sky blue on a clear day? Reply in JSON with verdict and reason."}]
    res = run_sync(generate_structured(llm, msgs, Verdict, GenParams(temperature=0.0, max_tokens=64)))
    assert res.ok and res.value.verdict in ("yes", "no") and isinstance(res.value.reason, str)
    assert llm._schema_style == "json_object"  # json_schema was refused once, the server's own form worked
    assert any("refuses response_format json_schema" in r.getMessage() for r in caplog.records)


def test_evolve_one_round(llama_server, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(open(EXAMPLES / "seeds.jsonl").readlines()[:3]))
    out = tmp_path / "evo.jsonl"
    res = runner.invoke(app, ["evolve", str(seeds), "-o", str(out), "--rounds", "1", "--json", "--keep-failed",
                              "--evolve-max-tokens", "48", "--answer-max-tokens", "48", "--judge", "embedding",
                              *_backend(llama_server), "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    recs = list(read_records(out))
    assert s["details"]["rounds"]["1"]["evolved"] == 3 and len(recs) == 3 and s["tokens"]["failed"] == 0
    assert s["profile"] == "fewshot" and all(r.lineage.model == f"openai:{ALIAS}" for r in recs)
    assert all(r.lineage.parents and r.lineage.round == 1 for r in recs)


def test_filter_with_judges_reads_logprobs(llama_server, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name the capital of France.", "output": "The capital of France is Paris."},
        {"instruction": "Add 2 and 3.", "output": "2 + 3 = 5."},
        {"instruction": "Translate 'thank you' into Spanish.", "output": "The Eiffel Tower is in Paris."}]))
    out = tmp_path / "clean.jsonl"
    res = runner.invoke(app, ["filter", str(src), "-o", str(out), "--judges", "on", "--refine-rounds", "0",
                              "--no-dedup", *_backend(llama_server), "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    recs = [r for p in (out, Path(f"{out}.review.jsonl"), Path(f"{out}.rejected.jsonl")) if p.stat().st_size
            for r in read_records(p)]
    assert len(recs) == 3
    for r in recs:  # the judge answered every record, from log-probabilities (a probability, not 0/1 text)
        assert 0.0 <= r.scores["alignment"] <= 1.0 and "alignment:unjudged" not in r.reasons
    assert any(0.0 < r.scores["alignment"] < 1.0 for r in recs)


def test_self_instruct_small(llama_server, tmp_path):
    out = tmp_path / "si.jsonl"
    res = runner.invoke(app, ["self-instruct", str(EXAMPLES / "seeds.jsonl"), "-o", str(out), "-n", "1", "--batch", "1",
                              "--max-requests", "2", "--max-tokens", "64", "--instance-max-tokens", "48",
                              "--temperature", "0.9", "--top-p", "0.95", "--json", *_backend(llama_server),
                              "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["profile"] == "fewshot" and s["details"]["candidates"] >= 1, s
    for r in (read_records(out) if out.exists() and out.stat().st_size else []):
        assert r.lineage.model == f"openai:{ALIAS}" and r.instruction.strip()
