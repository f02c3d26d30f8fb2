"""converse and pairs killed (SIGKILL) in the middle of a run: the re-run asks the model only about the
records the journal does not hold (nothing redone) and writes exactly what a clean run writes (nothing
lost), every conversation with its typed turns."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records, write_records
from dataforge.testing import LoopbackServer
from pipeline_helpers import load_jsonl
from test_converse import _seeds
from test_converse import model as converse_model
from test_kill_resume import _journaled, _kill_when
from test_pairs import evolved, obedient_when_cool

runner = CliRunner()


def _killed_resumed_and_clean(tmp_path, responder, args: list[str], per_record: int, n: int) -> dict:
    """Kill the run after 3 finished records, re-run it, then a clean run: returns the re-run's summary after
    checking what it asked for and what it wrote."""
    out, clean = tmp_path / "k.jsonl", tmp_path / "c.jsonl"
    with LoopbackServer(responder=responder, latency=0.15) as srv:
        common = [*args, "--base-url", srv.base_url, "--model", "m", "--no-cache", "--max-in-flight", "1"]
        _kill_when([*common, "-o", str(out)], _journaled(out, 3))
        time.sleep(0.5)  # a request sent just before the kill is counted before we start counting
        before = len(srv.requests)
        res = runner.invoke(app, [*common, "-o", str(out), "--json"])
        assert res.exit_code == 0, res.output
        asked_on_resume = len(srv.requests) - before
        assert runner.invoke(app, [*common, "-o", str(clean)]).exit_code == 0
        asked_clean = len(srv.requests) - before - asked_on_resume
    summary = json.loads(res.stdout)
    resumed = summary["resumed"]
    assert 3 <= resumed < n
    assert asked_clean == per_record * n and asked_on_resume == per_record * (n - resumed)
    assert load_jsonl(out) == load_jsonl(clean)
    return summary


def test_converse_killed_resumes_without_redoing_or_losing_a_conversation(tmp_path):
    src = _seeds(tmp_path, 8)
    # clarify only: every follow-up is model-written, so each record costs exactly 2 follow-ups + 2 answers
    _killed_resumed_and_clean(tmp_path, converse_model,
                              ["converse", str(src), "--turns", "3", "--styles", "clarify", "--seed", "1"], 4, 8)
    recs = list(read_records(tmp_path / "k.jsonl"))
    assert len(recs) == 8 and all(r.assistant_turns == 3 and [t.role for t in r.turns] == ["user", "assistant"] * 2
                                  and all(t.style == "clarify" for t in r.turns[::2]) for r in recs)


def test_pairs_killed_resumes_without_redoing_or_losing_a_pair(tmp_path):
    src = tmp_path / "evolved.jsonl"
    write_records(src, evolved(10))
    _killed_resumed_and_clean(tmp_path, obedient_when_cool,
                              ["pairs", str(src), "--temperatures", "0.2,1.3", "--judges", "off",
                               "--no-include-output"], 2, 10)
    rows = load_jsonl(tmp_path / "k.jsonl")
    assert len(rows) == 10 and {r["kind"] for r in rows} == {"verifiable"}
