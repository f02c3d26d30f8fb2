"""--shard i/n + merge (n=3) gives exactly what one unsharded run gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.errors import DataforgeError
from dataforge.pipeline import RunOptions, load_pipeline, run_pipeline
from dataforge.pipeline.merge import merge_files
from dataforge.testing.loopback import LoopbackServer
from pipeline_helpers import load_jsonl, scripted_responder, small_seeds


def _job(tmp_path: Path, base_url: str, seeds: Path) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(f"""\
name: sharded
input: {seeds}
backend: {{backend: openai, base_url: {base_url}, model: test, concurrency: 8}}
stages:
  - stage: evolve
    rounds: 2
  - stage: export
    format: record
    statuses: [accepted, review, pending]
""")
    return p


def _run(job: Path, run_dir: Path, cache: Path, **kw) -> dict:
    opts = RunOptions(run_dir=run_dir, progress=False, backend_overrides={"cache_path": str(cache)}, **kw)
    return run_pipeline(load_pipeline(job), opts)


def test_three_shards_merged_equal_the_unsharded_run(tmp_path):
    seeds = small_seeds(tmp_path, 9)
    with LoopbackServer(scripted_responder) as srv:
        job = _job(tmp_path, srv.base_url, seeds)
        _run(job, tmp_path / "whole", tmp_path / "whole.sqlite")
        parts = []
        for i in (1, 2, 3):
            d = tmp_path / f"part{i}"
            _run(job, d, tmp_path / "shards.sqlite", shard=(i, 3))
            m = json.loads((d / "manifest.json").read_text())
            assert m["shard"] == [i, 3] and m["stages"]["evolve"]["key"]["shard"] == [i, 3]
            parts.append(d)
    sizes = [json.loads((p / "manifest.json").read_text())["stages"]["evolve"]["counts"]["in"] for p in parts]
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert all(s > 0 for s in sizes) and sum(sizes) == whole["stages"]["evolve"]["counts"]["in"]

    res = CliRunner().invoke(app, ["merge", *map(str, parts), "-o", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    for stage in ("evolve", "export"):
        merged = load_jsonl(tmp_path / "merged" / stage / "records.jsonl")
        assert merged == load_jsonl(tmp_path / "whole" / stage / "records.jsonl")
        assert len(merged) > sum(sizes)  # evolution really made new records
    # the merged directory is a finished unsharded run: nothing left to do
    res = _run(job, tmp_path / "merged", tmp_path / "whole.sqlite")
    assert res["plan"] == [("evolve", "skip (done)"), ("export", "skip (done)")]
    m = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert m["stages"]["evolve"]["counts"]["in"] == sum(sizes)


def test_merge_refuses_incomplete_or_mixed_shards(tmp_path):
    seeds = small_seeds(tmp_path, 4)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: e\ninput: {seeds}\nstages:\n  - stage: export\n    statuses: [pending]\n")
    outs = []
    for i in (1, 2, 3):
        run_pipeline(load_pipeline(job), RunOptions(run_dir=tmp_path / f"p{i}", shard=(i, 3), progress=False))
        outs.append(tmp_path / f"p{i}" / "export" / "records.jsonl")
    with pytest.raises(DataforgeError, match="missing"):
        merge_files(outs[:2], tmp_path / "m.jsonl")
    with pytest.raises(DataforgeError, match="given twice"):
        merge_files([outs[0], outs[0], outs[1]], tmp_path / "m.jsonl")
    res = merge_files(outs, tmp_path / "m.jsonl")
    assert res["records"] == sum(res["parts"]) > 0
    whole = tmp_path / "whole"
    run_pipeline(load_pipeline(job), RunOptions(run_dir=whole, progress=False))
    assert (tmp_path / "m.jsonl").read_bytes() == (whole / "export" / "records.jsonl").read_bytes()


def test_sharded_run_stops_before_a_global_stage_and_merge_hands_it_over(tmp_path):
    seeds = small_seeds(tmp_path, 6)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: g\ninput: {seeds}\nstages:\n  - stage: export\n    statuses: [pending]\n"
                   "  - stage: balance\n")
    parts = []
    for i in (1, 2, 3):
        d = tmp_path / f"s{i}"
        res = run_pipeline(load_pipeline(job), RunOptions(run_dir=d, shard=(i, 3), progress=False))
        assert res["plan"][0] == ("export", "ran (new)")
        assert res["plan"][1][1].startswith("stopped: needs all shards")
        assert json.loads((d / "manifest.json").read_text())["stages"]["balance"]["status"] == "waiting-for-merge"
        parts.append(d)
    res = CliRunner().invoke(app, ["merge", *map(str, parts), "-o", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    plan = run_pipeline(load_pipeline(job), RunOptions(run_dir=tmp_path / "m", dry_run=True, progress=False))["plan"]
    assert plan == [("export", "skip (done)"), ("balance", "run (new)")]
