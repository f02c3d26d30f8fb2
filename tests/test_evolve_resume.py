"""Kill `dataforge evolve` with SIGKILL in the middle of a run, re-run the same command, and get the
same records as an uninterrupted run (request cache + journal), never a duplicate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from evolve_script import SEEDS, responder  # noqa: E402

from dataforge.stage import SideFiles
from dataforge.testing.loopback import LoopbackServer

REPO = Path(__file__).resolve().parent.parent


def _command(seeds: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dataforge", "evolve", str(seeds), "-o", str(out), "--rounds", "4",
            "--keep-failed", "--base-url", base_url, "--model", "test", "--cache", str(out.parent / "cache.sqlite"),
            "--concurrency", "2", "--seed", "3", "--json", *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATAFORGE_PROGRESS", None)
    env["OPENAI_API_KEY"] = "test-key"
    return env


def _without_timestamps(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r["lineage"].pop("timestamp")
    return rows


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out_a, out_b = tmp_path / "a" / "evolved.jsonl", tmp_path / "b" / "evolved.jsonl"
    with LoopbackServer(responder, latency=0.08) as srv:
        # the reference: round by round; the killed run speculates (the default), so this also checks
        # that a speculative run killed anywhere and resumed writes what a plain run writes
        full = subprocess.run(_command(seeds, out_a, srv.base_url, "--no-speculate"), cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert full.returncode == 0, full.stderr
        full_summary = json.loads(full.stdout)

        # the same command, killed once a dozen steps are journaled (mid round 2 or 3)
        journal = SideFiles(out_b).journal
        proc = subprocess.Popen(_command(seeds, out_b, srv.base_url), cwd=REPO, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count("\n") >= 12:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed; raise the latency"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert not out_b.exists() and journal.exists()
        journaled = journal.read_text().count("\n") - 1  # minus the header line
        requests_before = len(srv.requests)

        again = subprocess.run(_command(seeds, out_b, srv.base_url), cwd=REPO, env=_env(), capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        resumed = json.loads(again.stdout)
        resumed_requests = len(srv.requests) - requests_before

    assert resumed["resumed"] >= min(journaled, 12) > 0
    assert not journal.exists()
    a, b = _without_timestamps(out_a), _without_timestamps(out_b)
    assert a == b  # same records, same order
    ids = [r["id"] for r in b]
    assert len(ids) == len(set(ids))
    assert resumed["out"] == full_summary["out"]
    for key in ("rounds", "operations", "eliminated"):
        assert resumed["details"][key] == full_summary["details"][key]
    # finished work was not redone: fewer requests than the full run needed
    assert resumed_requests < full_summary["tokens"]["requests"]
