"""Magpie and preference pairs on real model software: the embedded SmolLM2-135M (llama.cpp in process) and
llama.cpp's OpenAI-compatible server serving the same GGUF (the `models` tests' fixture). Small runs: a
couple of records with short answers, so the shared machine is not held long."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records
from dataforge.llm.config import default_local_model

from test_llama_server import ALIAS, llama_server  # noqa: F401  (the module-scoped server fixture)

pytestmark = pytest.mark.slow
runner = CliRunner()
SMOLLM_PREFIX = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                 "<|im_start|>user\n")


def _magpie(out, *backend):
    res = runner.invoke(app, ["magpie", "-n", "2", "-o", str(out), "--json", "--batch", "4",
                              "--answer-max-tokens", "48", "--threads", "1", *backend])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _check(summary, out):
    d = summary["details"]
    recs = list(read_records(out))
    assert d["pre_query"] == SMOLLM_PREFIX and d["made"] == len(recs) == 2
    assert summary["out"] == {"pending": 2} and summary["tokens"]["failed"] == 0
    assert all(r.instruction.strip() and r.output.strip() and "<|im_" not in r.instruction for r in recs)
    assert d["queries_kept"] == 2 and d["requests"] % 4 == 0  # whole batches of 4
    return recs


def test_magpie_on_the_embedded_model(tmp_path):
    out = tmp_path / "pool.jsonl"
    recs = _check(_magpie(out, "--cache", str(tmp_path / "c.sqlite")), out)
    assert all(r.lineage.model.startswith("local:") for r in recs)


def test_magpie_against_the_llama_cpp_server(llama_server, tmp_path):  # noqa: F811
    out = tmp_path / "pool.jsonl"
    summary = _magpie(out, "--base-url", llama_server, "--model", ALIAS, "--chat-template",
                      str(default_local_model()), "--cache", str(tmp_path / "c.sqlite"), "--timeout", "120")
    recs = _check(summary, out)
    assert all(r.lineage.model == f"openai:{ALIAS}" for r in recs)
    assert summary["details"]["chat_template"] == f"gguf:{default_local_model().name}"
