"""Kill each stage with SIGKILL in the middle of a run, then run it again with other settings.

A stage that keeps a journal refuses to resume under other settings, with a message that names what
changed, and starts over with ``--restart``; a stage without one (balance, export) simply does its work
again. Never mixed: the final output always equals a clean run with the final settings. Only the killed
run is a separate process; the others run the same command in this one (models stay loaded), on small
inputs against the loopback server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from conftest import EXAMPLES
from golden import gate_judge
from pipeline_helpers import load_jsonl, scripted_responder, small_seeds
from dataforge.stage import SideFiles
from dataforge.testing import LoopbackServer

SEEDS = EXAMPLES / "seeds.jsonl"


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dataforge", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "DATAFORGE_PROGRESS": "0", "OPENAI_API_KEY": "test-key"}


def _run(*args: str) -> tuple[int, str]:
    """The command, run in this process as a shell would: (exit status, stderr)."""
    import contextlib
    import io

    from dataforge.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    return code, err.getvalue()


def _kill_when(args: list[str], ready: Callable[[], bool], cwd: Path | None = None) -> None:
    """Start the command, SIGKILL it once `ready()` holds (it must still be running then)."""
    proc = subprocess.Popen(_cmd(*args), env=_env(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _journaled(out: Path, n: int) -> Callable[[], bool]:
    """True once the journal holds `n` finished entries besides its header."""
    journal = SideFiles(out).journal
    return lambda: journal.is_file() and journal.read_text(encoding="utf-8").count("\n") > n


def _refused_then_restarted(tmp_path: Path, stage: str, src: Path, first: list[str], second: list[str],
                            changed: str, ready_after: int = 1) -> None:
    """Kill a run with `first` options, re-run with `second`: refused naming `changed`; --restart: the
    output equals a clean run with `second`."""
    out, clean = tmp_path / "killed" / "out.jsonl", tmp_path / "clean" / "out.jsonl"
    out.parent.mkdir()
    _kill_when([stage, str(src), "-o", str(out), *first], _journaled(out, ready_after))
    assert not out.exists() and SideFiles(out).journal.exists()
    code, err = _run(stage, str(src), "-o", str(out), *second)
    assert code == 2, err
    err = err.strip()
    assert "other settings" in err and changed in err and "--restart" in err and len(err.splitlines()) == 1
    assert not out.exists() and SideFiles(out).journal.exists()  # the killed run's work is kept, untouched
    code, err = _run(stage, str(src), "-o", str(out), *second, "--restart")
    assert code == 0, err
    assert _run(stage, str(src), "-o", str(clean), *second)[0] == 0
    assert load_jsonl(out) == load_jsonl(clean) and not SideFiles(out).journal.exists()


def test_filter_killed_then_rerun_with_another_config(tmp_path):
    rules = tmp_path / "gate.yaml"
    rules.write_text("checks:\n  coherence: {min: 0.1}\n")
    with LoopbackServer(gate_judge, latency=0.05) as srv:
        backend = ["--base-url", srv.base_url, "--model", "test", "--no-cache"]
        common = ["--judges", "on", "--refine-rounds", "0", "--batch-size", "2", "--no-reference", *backend]
        _refused_then_restarted(tmp_path, "filter", small_seeds(tmp_path, 10), common,
                                [*common, "--config", str(rules)], "options config")


def test_evolve_killed_then_rerun_with_other_rounds(tmp_path):
    seeds = small_seeds(tmp_path, 6)
    with LoopbackServer(scripted_responder, latency=0.05) as srv:
        backend = ["--base-url", srv.base_url, "--model", "test", "--no-cache", "--max-in-flight", "2"]
        _refused_then_restarted(tmp_path, "evolve", seeds, ["--rounds", "3", "--keep-failed", *backend],
                                ["--rounds", "2", "--keep-failed", *backend], "options rounds", ready_after=3)


def test_self_instruct_killed_then_rerun_with_another_temperature(tmp_path):
    from test_self_instruct import responder

    with LoopbackServer(responder, latency=0.1) as srv:
        common = ["-n", "10", "--batch", "1", "--base-url", srv.base_url, "--model", "test", "--no-cache"]
        _refused_then_restarted(tmp_path, "self-instruct", SEEDS, [*common, "--temperature", "0.7"],
                                [*common, "--temperature", "0.9"], "options temperature")


def test_stages_without_a_journal_redo_their_work_under_new_settings(tmp_path):
    """balance and export keep no journal (a re-run is cheap): killed and re-run with other options, they
    write what a clean run with those options writes, and the killed run leaves no partial file."""
    src = tmp_path / "in.jsonl"
    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()]
    src.write_text("".join(json.dumps({"instruction": r["instruction"], "output": r["instances"][0]["output"],
                                       "status": ("accepted", "review")[i % 2]}) + "\n" for i, r in enumerate(rows)))
    # balance is killed while it embeds and clusters; export takes a second at most, so it is killed early
    cases = [("balance", 1.5, ["--k", "2"], ["--k", "3"]),
             ("export", 0.3, ["--statuses", "accepted"], ["--statuses", "accepted,review"])]
    for stage, after, first, second in cases:
        work = tmp_path / stage
        work.mkdir()
        out, clean = work / "out.jsonl", work / "clean.jsonl"
        start = time.time()
        _kill_when([stage, str(src), "-o", str(out), *first], lambda: time.time() - start > after)
        assert not out.exists() and not [p for p in work.iterdir() if p.name.endswith(".tmp")]
        assert _run(stage, str(src), "-o", str(out), *second)[0] == 0
        assert _run(stage, str(src), "-o", str(clean), *second)[0] == 0
        assert load_jsonl(out) == load_jsonl(clean) and load_jsonl(out)
