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
from conftest import REPO
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


def _gate_input(tmp_path: Path) -> Path:
    """30 seeds plus planted duplicates of each kind: an exact copy (case), a near copy (one word), a
    paraphrase (semantic); the gate's dedup and balance's topics both have work to do."""
    from dataforge.io import read_records, write_records
    from dataforge.records import Record

    seeds = list(read_records(small_seeds(tmp_path, 30)))
    long = seeds[4]
    planted = [
        Record(instruction=seeds[2].instruction.upper(), input=seeds[2].input, output=seeds[2].output),
        Record(instruction=long.instruction.replace(" a ", " one ", 1) + " Please.", input=long.input, output=long.output),
        Record(instruction="Give me three tips to stay healthy.", output="Sleep well, eat vegetables, move daily."),
        Record(instruction="Give three tips for staying healthy.", output="Sleep well, eat vegetables, move daily."),
    ]
    out = tmp_path / "gate_in.jsonl"
    write_records(out, seeds + planted)
    return out


def _outputs(root: Path) -> dict[str, bytes]:
    """Every record and stats file a run wrote, wall times (embed_s, cluster_s) zeroed."""
    import re

    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".jsonl", ".json") and p.name != "manifest.json":
            data = p.read_bytes()
            if p.name.endswith("stats.json"):
                data = re.sub(rb'("(?:embed_s|cluster_s)": )[0-9.]+', rb"\g<1>0", data)
            files[str(p.relative_to(root))] = data
    return files


def test_filter_balance_on_ray_writes_what_a_local_run_writes(tmp_path, ray_local, monkeypatch):
    """`dataforge run filter_balance.yaml --ray local`: the gate's scoring, balance's embeddings and the export
    run as Work on two Ray workers, dedup and the choice on the driver; every file equals a local run's.
    The shipped pipeline's stages with the gate's checks that need no model (model calls on Ray workers:
    the judged test below); with the embedded model's self-consistency this test took 150 s."""
    monkeypatch.chdir(tmp_path)  # the export writes its chat copy under ./runs/filter_balance
    monkeypatch.setenv("DATAFORGE_PROGRESS", "0")
    src = _gate_input(tmp_path)
    shipped = (REPO / "pipelines" / "filter_balance.yaml").read_text()
    assert "  - stage: filter\n" in shipped
    job = tmp_path / "filter_balance.yaml"
    job.write_text(shipped.replace("  - stage: filter\n", "  - stage: filter\n    no_llm: true\n"))
    runs = {}
    for name, extra in (("local", []), ("ray", ["--ray", "local"])):
        res = CliRunner().invoke(app, ["run", str(job), "--input", str(src), "--run-dir", str(tmp_path / name),
                                       *extra])
        assert res.exit_code == 0, res.output
        copy = tmp_path / "runs" / "filter_balance" / "balanced.chat.jsonl"
        runs[name] = {**_outputs(tmp_path / name), "copy": copy.read_bytes()}
        copy.unlink()
    assert sorted(runs["ray"]) == sorted(runs["local"]) and runs["ray"] == runs["local"]
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    for stage in ("filter", "balance", "export"):
        assert m["stages"][stage]["summary"]["details"]["ray"]["workers"] == 2
        assert m["stages"][stage]["summary"]["details"]["ray"]["batches"] >= 1
    dedup = m["stages"]["filter"]["summary"]["details"]["dedup"]
    assert dedup["exact"] >= 1 and dedup["near"] + dedup["semantic"] >= 2  # the planted copies were found
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert "ray" not in local["stages"]["filter"]["summary"]["details"]


def test_judged_filter_on_ray_counts_the_workers_requests(tmp_path, ray_local):
    """With model judges, each Ray worker judges through its own endpoint; the requests the workers made
    are the ones the stage's summary counts, and the records equal a local run's."""
    from golden import gate_judge

    src = _gate_input(tmp_path)
    with LoopbackServer(gate_judge) as a, LoopbackServer(gate_judge) as b:
        def job(name: str, ray_block: str) -> Path:
            p = tmp_path / f"{name}.yaml"
            p.write_text(f"name: {name}\ninput: {src}\nbackend: {{backend: openai, base_url: {a.base_url}, model: test}}\n"
                         f"{ray_block}stages:\n  - stage: filter\n    judges: 'on'\n    refine_rounds: 0\n"
                         "    extract_constraints: 'off'\n    batch_size: 8\n")
            return p

        run_pipeline(load_pipeline(job("plain", "")), RunOptions(run_dir=tmp_path / "plain", progress=False,
                                                                 backend_overrides={"no_cache": True}))
        a.reset()
        b.reset()
        ray_job = job("fan", f"ray: {{address: local, endpoints: [{a.base_url}, {b.base_url}]}}\n")
        res = run_pipeline(load_pipeline(ray_job), RunOptions(run_dir=tmp_path / "ray", progress=False,
                                                              backend_overrides={"no_cache": True}))
    entry = res["manifest"]["stages"]["filter"]
    assert a.request_count > 0 and b.request_count > 0
    assert entry["tokens"]["requests"] == a.request_count + b.request_count
    n_in = entry["summary"]["in"]
    assert entry["summary"]["details"]["judges"] == "model" and n_in > 16
    assert entry["summary"]["details"]["ray"]["batches"] == -(-n_in // 8)  # batch_size 8, one task each
    assert load_jsonl(tmp_path / "ray" / "filter" / "records.jsonl") == \
        load_jsonl(tmp_path / "plain" / "filter" / "records.jsonl")


def test_a_budget_stops_a_judged_filter_on_ray(tmp_path, ray_local):
    """The workers' meters have no budget: the driver counts what they spent after each batch, sends no
    new batch once the job's budget is reached, and the stage stops as a local run does (journal kept)."""
    from golden import gate_judge

    from dataforge.llm import BackendConfig
    from dataforge.pipeline.ray_executor import RayMapper
    from dataforge.pipeline.spec import RaySettings
    from dataforge.quality.gate import FilterConfig, FilterStage
    from dataforge.stage import SideFiles, run_stage
    from dataforge.stage.budget import Budget

    src = _gate_input(tmp_path)
    cfg = FilterConfig(judges="on", refine_rounds=0, extract_constraints="off", batch_size=4)
    with LoopbackServer(gate_judge) as a, LoopbackServer(gate_judge) as b:
        backend = BackendConfig(backend="openai", base_url=a.base_url, model="test", no_cache=True)
        mapper = RayMapper(RaySettings(address="local", endpoints=[a.base_url, b.base_url]), backend)
        out = tmp_path / "ray" / "gated.jsonl"
        s = run_stage(FilterStage, src, out, cfg, backend=backend, progress=False, mapper=mapper,
                      budget=Budget(tokens=1))
    n_batches = -(-s.records_in // 4)
    assert s.stopped == "token budget of 1 reached" and SideFiles(out).journal.is_file()
    assert 1 <= mapper.report["batches"] <= 2 * 2 < n_batches  # the batches in flight when it was reached
    assert s.tokens.requests == a.request_count + b.request_count > 0 and not out.exists()
