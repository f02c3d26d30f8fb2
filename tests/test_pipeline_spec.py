"""Pipeline YAML validation: every mistake is a DataforgeError naming the file and the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dataforge.errors import DataforgeError
from dataforge.pipeline import load_pipeline, parse_pipeline
from dataforge.pipeline.spec import find_pipeline, shipped_pipelines

GOOD = """\
name: demo
input: seeds.jsonl
stages:
  - stage: export
    format: chat
"""


def _error(tmp_path: Path, text: str) -> str:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    with pytest.raises(DataforgeError) as exc:
        load_pipeline(p)
    return str(exc.value)


def test_good_pipeline_parses_with_defaults():
    spec = parse_pipeline(GOOD, where="g.yaml")
    assert spec.name == "demo"
    assert [s.kind for s in spec.stages] == ["export"]
    assert spec.stages[0].config.format == "chat"
    assert spec.stages[0].config.statuses == ["accepted", "pending"]


def test_unknown_stage_names_file_and_line(tmp_path):
    msg = _error(tmp_path, GOOD + "  - stage: evolvee\n")
    assert re.search(r"job\.yaml:6: unknown stage 'evolvee'", msg), msg


def test_unknown_field_names_its_line(tmp_path):
    msg = _error(tmp_path, GOOD.replace("    format: chat\n", "    format: chat\n    colour: red\n"))
    assert re.search(r"job\.yaml:6: unknown field 'colour'", msg), msg


def test_bad_type_names_its_line(tmp_path):
    msg = _error(tmp_path, GOOD.replace("format: chat", "format: [1, 2]"))
    assert re.search(r"job\.yaml:5: format:", msg), msg


def test_bad_header_type_and_missing_fields(tmp_path):
    assert re.search(r"job\.yaml:3: seed:", _error(tmp_path, "name: x\ninput: a\nseed: many\nstages: [{stage: export}]\n"))
    assert re.search(r"job\.yaml:1: missing required field 'stages'", _error(tmp_path, "name: x\ninput: a\n"))
    assert re.search(r"missing required field 'name'", _error(tmp_path, "input: a\nstages: [{stage: export}]\n"))
    assert re.search(r"job\.yaml:\d+: missing required field 'input'", _error(tmp_path, "name: x\nstages: [{stage: export}]\n"))


def test_yaml_syntax_error_and_duplicates(tmp_path):
    assert re.search(r"job\.yaml:3: not valid YAML", _error(tmp_path, "name: x\nstages:\n  - stage: export: bad\n"))
    msg = _error(tmp_path, GOOD + "  - stage: export\n")
    assert "two stages are named 'export'" in msg and "job.yaml:6" in msg


def test_stage_reading_a_later_stage_is_refused(tmp_path):
    text = GOOD.replace("    format: chat\n", "    format: chat\n    input: later\n") + "  - stage: export\n    name: later\n"
    assert "runs later" in _error(tmp_path, text)


def test_ray_settings_are_validated(tmp_path):
    msg = _error(tmp_path, GOOD + "ray:\n  address: local\n  batch_size: 0\n")
    assert re.search(r"job\.yaml:8: ray\.batch_size", msg), msg


def test_paths_resolve_beside_the_yaml_then_cwd(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "seeds.jsonl").write_text("{}\n")
    p = tmp_path / "jobs" / "job.yaml"
    p.write_text(GOOD)
    spec = load_pipeline(p)
    assert spec.resolve("seeds.jsonl") == tmp_path / "jobs" / "seeds.jsonl"
    monkeypatch.chdir(tmp_path)
    assert spec.resolve("elsewhere.jsonl") == tmp_path / "elsewhere.jsonl"


def test_shipped_pipelines_are_found_by_bare_name():
    names = shipped_pipelines()
    assert {"alpaca_bootstrap", "evol_corpus", "filter_balance", "full_chain"} <= set(names)
    assert find_pipeline("evol_corpus").name == "evol_corpus.yaml"
    with pytest.raises(DataforgeError, match="no such pipeline"):
        find_pipeline("no_such_job")


def test_every_shipped_pipeline_validates_and_its_input_exists():
    for name in shipped_pipelines():
        spec = load_pipeline(find_pipeline(name))
        assert spec.stages, name
        assert spec.resolve(spec.header.input).exists(), name


def test_engine_owned_stage_options_are_refused(tmp_path):
    msg = _error(tmp_path, GOOD + "  - stage: evolve\n    name: e2\n    shard: 1/2\n")
    assert re.search(r"job\.yaml:8: 'shard' is set by the pipeline", msg), msg
