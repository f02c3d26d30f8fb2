"""End to end: a pipeline killed with SIGKILL in the middle of a stage, then re-run, ends with the
same outputs as an uninterrupted run, and the manifest accounts for every input record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dataforge.io import read_records
from dataforge.testing.loopback import LoopbackServer
from pipeline_helpers import load_jsonl, scripted_responder, small_seeds

STAGES = ("evolve", "export")


def _job(tmp_path: Path, base_url: str, seeds: Path) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(f"""\
name: killme
input: {seeds}
backend: {{backend: openai, base_url: {base_url}, model: test, concurrency: 2}}
stages:
  - stage: evolve
    rounds: 2
    keep_failed: true   # failed evolutions stay, status rejected with the reason
  - stage: export
    format: alpaca
    statuses: [accepted, review, pending]
    path: {tmp_path / 'final.alpaca.jsonl'}
""")
    return p


def _cmd(job: Path, run_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "dataforge", "run", str(job), "--run-dir", str(run_dir), "--cache", str(cache)]


def _env() -> dict[str, str]:
    return {**os.environ, "DATAFORGE_PROGRESS": "0"}


def test_sigkill_mid_stage_then_rerun_equals_uninterrupted(tmp_path):
    seeds = small_seeds(tmp_path, 8)
    with LoopbackServer(scripted_responder, latency=0.03) as srv:
        job = _job(tmp_path, srv.base_url, seeds)
        subprocess.run(_cmd(job, tmp_path / "clean", tmp_path / "clean.sqlite"), check=True, env=_env(),
                       capture_output=True, timeout=120)
        total = srv.request_count
        assert total > 20
        srv.reset()

        proc = subprocess.Popen(_cmd(job, tmp_path / "killed", tmp_path / "killed.sqlite"), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while srv.request_count < total // 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
        assert manifest["stages"]["evolve"]["status"] == "running"  # killed in the middle of the stage
        assert not (tmp_path / "killed" / "evolve" / "records.jsonl").exists()
        before = srv.request_count

        subprocess.run(_cmd(job, tmp_path / "killed", tmp_path / "killed.sqlite"), check=True, env=_env(),
                       capture_output=True, timeout=120)
        # finished work was not redone: only what was missing (plus requests cut off in flight) is sent again
        assert srv.request_count - before <= total - before + 4

    for stage in STAGES:
        assert load_jsonl(tmp_path / "killed" / stage / "records.jsonl") == \
            load_jsonl(tmp_path / "clean" / stage / "records.jsonl")
    assert load_jsonl(tmp_path / "final.alpaca.jsonl")

    m = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert all(m["stages"][s]["status"] == "done" for s in STAGES)
    evolve, export = m["stages"]["evolve"], m["stages"]["export"]
    assert evolve["summary"]["resumed"] > 0  # the re-run picked up the killed run's journal
    # every seed record is accounted for: records descending from it are in the evolve output, each
    # with a status (and a reason where rejected)
    out = list(read_records(tmp_path / "killed" / "evolve" / "records.jsonl"))
    seed_ids = {r.id for r in read_records(seeds)}
    assert seed_ids == {r.lineage.root for r in out}
    assert all(r.status in ("pending", "rejected") and (r.status == "pending" or r.reasons) for r in out)
    assert evolve["counts"]["by_status"].get("rejected", 0) > 0  # the scripted "sorry" answers were eliminated
    assert evolve["counts"]["in"] == len(seed_ids)
    assert evolve["counts"]["out"] == len(out) == sum(evolve["counts"]["by_status"].values())
    # export: written + left out (by counted reason) = what came in
    assert export["counts"]["in"] == evolve["counts"]["out"]
    assert export["counts"]["out"] + sum(export["summary"]["details"]["left_out"].values()) == export["counts"]["in"]
    assert export["summary"]["details"]["left_out"].get("status:rejected") == evolve["counts"]["by_status"]["rejected"]
    assert m["totals"]["tokens"]["requests"] > 0
    # what shaped the output is on record: backend and model, template hashes, versions
    assert m["backend"]["model"] == "test" and m["backend"]["base_url"].startswith("http://127.0.0.1")
    assert m["prompts"]["evol_deepen.chat"] and m["prompts"]["answer.chat"]
    assert {"python", "dataforge", "torch", "pydantic"} <= set(m["environment"]["versions"])
    assert evolve["key"]["prompts_hash"] and export["key"]["prompts_hash"] is None
    assert evolve["model"] == "openai:test"
