"""The pipeline engine: run directory, manifest, skip what is done, redo only what changed."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records
from dataforge.pipeline import RunOptions, load_pipeline, run_pipeline

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "examples" / "seeds.jsonl"


def _yaml(path: Path, name: str, stages: str) -> Path:
    path.write_text(f"name: {name}\ninput: {SEEDS}\nstages:\n{stages}")
    return path


def _job(tmp_path: Path, fmt: str = "chat", extra: str = "") -> Path:
    return _yaml(tmp_path / "job.yaml", "exportjob", f"""\
  - stage: export
    name: first
    format: record
    statuses: [pending]
  - stage: export
    name: second
    format: {fmt}
    statuses: [pending]
    path: {tmp_path / 'final.jsonl'}
{extra}""")


def _run(path: Path, run_dir: Path, **kw) -> dict:
    return run_pipeline(load_pipeline(path), RunOptions(run_dir=run_dir, progress=False, **kw))


def test_run_writes_outputs_and_a_complete_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value-123")
    run_dir = tmp_path / "run"
    res = _run(_job(tmp_path), run_dir)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert res["plan"] == [("first", "ran (new)"), ("second", "ran (new)")]
    n_seed_records = sum(1 for _ in read_records(SEEDS))
    for name in ("first", "second"):
        e = m["stages"][name]
        assert e["status"] == "done" and e["seconds"] >= 0 and e["output_hash"]
        assert e["counts"]["in"] == n_seed_records
        # every input record is accounted for: written, or left out with a counted reason
        assert e["counts"]["out"] + sum(e["summary"]["details"]["left_out"].values()) == e["counts"]["in"]
        assert (run_dir / name / "records.jsonl").is_file()
    assert m["config_hash"] and m["environment"]["versions"]["python"]
    assert m["environment"]["versions"]["dataforge"]
    chat = [json.loads(line) for line in (tmp_path / "final.jsonl").read_text().splitlines()]
    assert chat and chat[0]["messages"][0]["role"] == "user"
    assert "sk-very-secret-value-123" not in (run_dir / "manifest.json").read_text()


def test_rerun_skips_done_and_redoes_only_what_changed(tmp_path):
    run_dir = tmp_path / "run"
    _run(_job(tmp_path), run_dir)
    first_started = json.loads((run_dir / "manifest.json").read_text())["stages"]["first"]["started"]
    assert _run(_job(tmp_path), run_dir)["plan"] == [("first", "skip (done)"), ("second", "skip (done)")]
    # an edit to the second stage's config redoes only that stage
    res = _run(_job(tmp_path, fmt="alpaca"), run_dir)
    assert res["plan"] == [("first", "skip (done)"), ("second", "ran (config changed)")]
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["stages"]["first"]["started"] == first_started
    assert set(json.loads((tmp_path / "final.jsonl").read_text().splitlines()[0])) == {"instruction", "input", "output"}
    # a hand-edited output is noticed and redone; the stage after it sees an identical input and stays done
    out = run_dir / "first" / "records.jsonl"
    out.write_text(out.read_text() + "\n")
    assert _run(_job(tmp_path, fmt="alpaca"), run_dir)["plan"] == [("first", "ran (output missing or edited)"),
                                                                   ("second", "skip (done)")]
    # --from forces a stage and everything after it
    res = _run(_job(tmp_path, fmt="alpaca"), run_dir, from_stage="first")
    assert res["plan"] == [("first", "ran (forced by --from)"), ("second", "ran (forced by --from)")]


def test_changed_input_redoes_downstream(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(SEEDS.read_text())
    run_dir = tmp_path / "run"
    _run(_job(tmp_path), run_dir, input=str(seeds))
    lines = seeds.read_text().splitlines()
    seeds.write_text("\n".join(lines[:-3]) + "\n")
    res = _run(_job(tmp_path), run_dir, input=str(seeds))
    assert res["plan"] == [("first", "ran (input changed)"), ("second", "ran (input changed)")]
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["stages"]["second"]["counts"]["in"] < sum(1 for _ in read_records(SEEDS))


def test_dry_run_runs_nothing(tmp_path):
    run_dir = tmp_path / "run"
    res = _run(_job(tmp_path), run_dir, dry_run=True)
    assert res["plan"][0] == ("first", "run (new)")
    assert not (run_dir / "first" / "records.jsonl").exists()


def test_cli_run_and_errors(tmp_path):
    runner = CliRunner()
    job = _job(tmp_path)
    res = runner.invoke(app, ["run", str(job), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "manifest.json").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text(job.read_text().replace("format: record", "format: recordz"))
    res = runner.invoke(app, ["run", str(bad)])
    assert res.exit_code != 0
    assert "bad.yaml:6" in str(res.exception) or "bad.yaml:6" in res.output


def test_scrub_drops_credentials_by_name_and_by_value(monkeypatch):
    from dataforge.pipeline.manifest import scrub

    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdef123456")
    out = scrub({"api_key": "x", "nested": [{"Authorization": "Bearer y", "url": "http://h/?k=sk-abcdef123456"}],
                 "tokens": {"total_tokens": 5}})
    assert out == {"nested": [{"url": "http://h/?k=***"}], "tokens": {"total_tokens": 5}}


def test_input_can_be_a_saved_hf_dataset_folder(tmp_path):
    from datasets import Dataset

    rows = [{"instruction": f"Name a colour number {i}.", "input": "", "output": f"Colour {i}"} for i in range(5)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    job = tmp_path / "hf.yaml"
    job.write_text(f"name: hf\ninput: {tmp_path / 'ds'}\nstages:\n  - stage: export\n    statuses: [pending]\n")
    res = run_pipeline(load_pipeline(job), RunOptions(run_dir=tmp_path / "run", progress=False))
    e = res["manifest"]["stages"]["export"]
    assert e["counts"]["in"] == e["counts"]["out"] == 5 and e["key"]["input_hash"]
    assert run_pipeline(load_pipeline(job), RunOptions(run_dir=tmp_path / "run", progress=False))["plan"] == \
        [("export", "skip (done)")]


def test_a_second_run_on_the_same_run_dir_is_refused(tmp_path):
    import fcntl

    import pytest

    from dataforge.errors import DataforgeError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `dataforge run` holds it
        with pytest.raises(DataforgeError, match="another `dataforge run` is using this run directory"):
            _run(_job(tmp_path), run_dir)
    assert _run(_job(tmp_path), run_dir)["plan"][0] == ("first", "ran (new)")


def test_a_changed_side_input_file_redoes_the_stage(tmp_path, monkeypatch):
    """A config option naming a file the stage reads (evolve's steer stats, the gate's reference set):
    its content is part of the stage key, not just its name."""
    import dataforge.pipeline.engine as engine_mod
    from dataforge.curate.export import ExportStage

    monkeypatch.setattr(ExportStage, "side_inputs", ("path",))  # export's `path` stands in for such an option
    side = tmp_path / "stats.json"
    side.write_text('{"a": 1}')
    eng = engine_mod.Engine(load_pipeline(_job(tmp_path)), RunOptions(run_dir=tmp_path / "run", progress=False))
    st = eng.stages[0]
    without = eng.stage_key(st, "h")["config_hash"]
    st.item.config = st.item.config.model_copy(update={"path": str(side)})
    before = eng.stage_key(st, "h")["config_hash"]
    side.write_text('{"a": 2}')
    after = eng.stage_key(st, "h")["config_hash"]
    assert len({without, before, after}) == 3


def test_a_train_stage_runs_alone_through_the_same_runner(tmp_path, one_torch_thread):
    """train owns its run (own reader, checkpoints): the engine still reaches it only through the registry,
    and the manifest gets its summary, counts and folder output."""
    from dataforge.train.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    model_dir = tmp_path / "tiny"
    tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    job = _yaml(tmp_path / "train.yaml", "trainjob", f"""\
  - stage: export
    format: record
    statuses: [pending]
  - stage: train
    model: {model_dir}
    max_steps: 1
    batch_size: 2
    max_length: 64
""")
    res = _run(job, tmp_path / "run")
    assert res["plan"] == [("export", "ran (new)"), ("train", "ran (new)")]
    entry = res["manifest"]["stages"]["train"]
    assert entry["status"] == "done" and entry["counts"]["in"] == sum(1 for _ in read_records(SEEDS))
    assert entry["summary"]["stage"] == "train" and entry["summary"]["details"]["steps"] == 1
    assert (tmp_path / "run" / "train" / "model" / "model" / "config.json").is_file()  # the run dir's model/
    assert _run(job, tmp_path / "run")["plan"] == [("export", "skip (done)"), ("train", "skip (done)")]
