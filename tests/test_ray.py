"""Ray fan-out of a generation stage: a local Ray instance on 2 CPUs, two loopback servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray  # in the `test` extra (and `[ray]` for users)
from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.pipeline import RunOptions, load_pipeline, run_pipeline
from dataforge.testing.loopback import LoopbackServer
from pipeline_helpers import load_jsonl, scripted_responder, small_seeds


@pytest.fixture(scope="module")
def ray_local():
    """One Ray instance for the whole module (starting Ray costs seconds)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _job(tmp_path: Path, seeds: Path, a: str, b: str, ray_block: bool) -> Path:
    p = tmp_path / ("ray.yaml" if ray_block else "plain.yaml")
    ray_yaml = f"ray: {{address: local, endpoints: [{a}, {b}], batch_size: 3}}\n" if ray_block else ""
    p.write_text(f"""\
name: fanout
input: {seeds}
backend: {{backend: openai, base_url: {a}, model: test, concurrency: 4}}
{ray_yaml}stages:
  - stage: evolve
    rounds: 2
""")
    return p


def test_ray_fan_out_uses_both_endpoints_and_equals_a_plain_run(tmp_path, ray_local):
    seeds = small_seeds(tmp_path, 8)
    with LoopbackServer(scripted_responder) as a, LoopbackServer(scripted_responder) as b:
        plain = _job(tmp_path, seeds, a.base_url, b.base_url, ray_block=False)
        run_pipeline(load_pipeline(plain), RunOptions(run_dir=tmp_path / "plain", progress=False,
                                                      backend_overrides={"cache_path": str(tmp_path / "p.sqlite")}))
        a.reset()
        b.reset()
        job = _job(tmp_path, seeds, a.base_url, b.base_url, ray_block=True)
        opts = RunOptions(run_dir=tmp_path / "ray", progress=False,
                          backend_overrides={"cache_path": str(tmp_path / "r.sqlite")})
        res = run_pipeline(load_pipeline(job), opts)
        n_a, n_b = a.request_count, b.request_count
        assert n_a > 0 and n_b > 0, (n_a, n_b)
        entry = res["manifest"]["stages"]["evolve"]
        ray_info = entry["summary"]["ray"]
        assert ray_info["batches"] >= 3 and len(ray_info["batches_per_endpoint"]) == 2
        # accounting: the usage of every batch is summed into the manifest
        assert entry["tokens"]["requests"] == n_a + n_b
        assert entry["tokens"]["completion"] > 0
        assert load_jsonl(tmp_path / "ray" / "evolve" / "records.jsonl") == \
            load_jsonl(tmp_path / "plain" / "evolve" / "records.jsonl")

        # resume: finished batches are kept; rebuilding the output sends no request at all
        (tmp_path / "ray" / "evolve" / "records.jsonl").unlink()
        a.reset()
        b.reset()
        res = run_pipeline(load_pipeline(job), opts)
        assert res["plan"] == [("evolve", "ran (output missing or edited)")]
        assert res["manifest"]["stages"]["evolve"]["summary"]["ray"]["resumed_batches"] == ray_info["batches"]
        assert a.request_count + b.request_count == 0
        assert load_jsonl(tmp_path / "ray" / "evolve" / "records.jsonl") == \
            load_jsonl(tmp_path / "plain" / "evolve" / "records.jsonl")

        # the command line's --ray turns fan-out on for a YAML without a ray block
        res = CliRunner().invoke(app, ["run", str(plain), "--ray", "local", "--run-dir", str(tmp_path / "cli"),
                                       "--cache", str(tmp_path / "r.sqlite")])
        assert res.exit_code == 0, res.output
        m = json.loads((tmp_path / "cli" / "manifest.json").read_text())
        assert m["ray"]["address"] == "local" and m["stages"]["evolve"]["summary"]["ray"]["batches"] == 1
        assert load_jsonl(tmp_path / "cli" / "evolve" / "records.jsonl") == \
            load_jsonl(tmp_path / "plain" / "evolve" / "records.jsonl")
