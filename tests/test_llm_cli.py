"""`dataforge chat` and `dataforge backends` end to end, against the loopback server and the embedded model."""

from __future__ import annotations

from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.testing import Fault, LoopbackServer

runner = CliRunner()


def test_chat_prints_reply_and_usage_then_hits_the_cache(tmp_path):
    cache = str(tmp_path / "c.sqlite")
    with LoopbackServer(responder=lambda b: "Paris is the capital.") as srv:
        args = ["chat", "Capital of France?", "--base-url", srv.base_url, "--model", "test", "--cache", cache,
                "--system", "Be brief.", "--seed", "3"]
        first = runner.invoke(app, args)
        second = runner.invoke(app, args)
        body = srv.requests[0]
        assert srv.request_count == 1
    assert first.exit_code == 0, first.output
    assert "Paris is the capital." in first.output and "openai:test" in first.output
    assert body["messages"][0] == {"role": "system", "content": "Be brief."} and body["seed"] == 3
    assert "cached" in second.output and "True" in second.output


def test_chat_failure_is_one_clear_line(tmp_path):
    with LoopbackServer(responder=lambda b: Fault("400")) as srv:
        res = runner.invoke(app, ["chat", "x", "--base-url", srv.base_url, "--model", "test", "--no-cache"])
    assert res.exit_code != 0 and isinstance(res.exception, Exception) and "400" in str(res.exception)


def test_backends_probes_the_configured_server():
    with LoopbackServer(latency=0.01) as srv:
        res = runner.invoke(app, ["backends", "--base-url", srv.base_url, "--probe-tokens", "8"], env={"COLUMNS": "200"})
        assert srv.request_count == 1 and srv.requests[0]["max_tokens"] == 8
    assert res.exit_code == 0, res.output
    assert "openai *" in res.output and "ok" in res.output and "test (chat)" in res.output
    assert "not installed" in res.output or "installed" in res.output  # the vllm row


def test_backends_reports_an_unreachable_server():
    res = runner.invoke(app, ["backends", "--base-url", "http://127.0.0.1:9/v1", "--timeout", "2"], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "unreachable" in res.output


def test_backends_local_probe():
    res = runner.invoke(app, ["backends", "--probe-tokens", "4"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "local *" in res.output and "SmolLM2-135M-Instruct.Q4_1 (fewshot)" in res.output and "probe: " in res.output
