"""The stage contract itself: the runner's journal fingerprint, the refusal of a run whose requests all
failed, side-file names, the summary's shape, and a stage written from scratch (the README's example)."""

from __future__ import annotations

import json
import re

import pytest

import sys

from conftest import EXAMPLES, REPO
from dataforge.cli import main
from dataforge.errors import DataforgeError
from dataforge.generate.evolve import EvolveConfig, EvolveStage
from dataforge.io import read_records, write_records
from dataforge.llm import BackendConfig
from dataforge.records import Record
from dataforge.stage import SideFiles, StageJournal, run_stage
from dataforge.testing import Fault, LoopbackServer

SEEDS = EXAMPLES / "seeds.jsonl"
sys.path.insert(0, str(REPO / "tests"))


def _backend(srv: LoopbackServer, **kw) -> BackendConfig:
    return BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True, max_retries=0, **kw)


def test_journal_header_names_what_changed_and_restart_starts_over(tmp_path):
    path = tmp_path / "j.jsonl"
    header = {"stage": "evolve", "version": 3, "config": {"rounds": 2, "seed": 0}, "input": "abc", "model": "m"}
    with StageJournal(path, header) as j:
        j.append({"step": 1})
    again = StageJournal(path, header)  # same settings: the finished work is there to resume
    assert list(again.entries) == [{"step": 1}] and len(again.entries) == 1 and again.holds_work()
    again.close()
    other = {**header, "config": {"rounds": 3, "seed": 0}, "model": "m2"}
    with pytest.raises(DataforgeError) as err:
        StageJournal(path, other)
    msg = str(err.value)
    assert "other settings" in msg and "options rounds" in msg and "the model" in msg and "--restart" in msg
    assert "seed" not in msg  # only what changed is named
    fresh = StageJournal(path, other, restart=True)
    assert list(fresh.entries) == [] and not fresh.entries and not fresh.holds_work()
    fresh.close()
    assert json.loads(path.read_text().splitlines()[0]) == {"header": other}


def test_side_files_are_named_in_one_place_and_old_bad_lines_are_still_found(tmp_path):
    side = SideFiles(tmp_path / "out.jsonl")
    assert side.bad_lines.name == "out.jsonl.bad-lines.jsonl" and side.rejected.name == "out.jsonl.rejected.jsonl"
    assert side.journal.name == "out.jsonl.partial.jsonl" and side.order.name == "out.jsonl.order.json"
    assert side.bad_lines_written() is None and side.record_files() == {}
    side.legacy_bad_lines.write_text('{"line": 1}\n')  # a run from before the rename left this
    side.review.write_text("")
    assert side.bad_lines_written() == side.legacy_bad_lines
    assert side.record_files() == {"bad_lines": side.legacy_bad_lines, "review": side.review}
    side.drop_empty()
    assert not side.review.exists() and side.legacy_bad_lines.exists()


def test_a_run_where_every_request_fails_exits_non_zero_with_one_line(tmp_path, capsys):
    """A server that refuses every request: exit 2 and one line naming the cause."""
    out = tmp_path / "evolved.jsonl"
    with LoopbackServer(lambda body: Fault("400")) as srv:
        with pytest.raises(SystemExit) as ex:
            main(["evolve", str(SEEDS), "-o", str(out), "--rounds", "1", "--base-url", srv.base_url, "--model",
                  "test", "--no-cache", "--max-retries", "0"])
        sent = srv.request_count
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2 and sent > 0
    assert len(err) == 1 and err[0].startswith(f"error: evolve: {sent} of {sent} model requests failed and "
                                               "nothing was produced (most common cause:")
    assert "400" in err[0]
    # what was decided is written (nothing: every evolution failed), and the journal is dropped so that a
    # re-run retries every request instead of resuming the failures
    assert out.exists() and out.stat().st_size == 0 and not SideFiles(out).journal.exists()


def test_a_run_that_produced_records_is_not_refused_for_some_failures(tmp_path):
    """Most requests fail, but one chain gets through: that is a (thin) result, not a broken run."""
    from pipeline_helpers import scripted_responder

    seeds = tmp_path / "seeds.jsonl"
    chosen = list(read_records(SEEDS))[:6]
    write_records(seeds, chosen)
    lucky = chosen[0].instruction[:40]

    def mostly_failing(body):
        return scripted_responder(body) if lucky in json.dumps(body) else Fault("400")

    with LoopbackServer(mostly_failing) as srv:
        summary = run_stage(EvolveStage, seeds, tmp_path / "o.jsonl", EvolveConfig(rounds=1, keep_failed=True,
                                                                                    elimination={"judge": "off"}),
                            backend=_backend(srv), progress=False)
    assert 2 * summary.tokens.failed > summary.tokens.requests and summary.produced >= 1
    assert summary.details["eliminated"] == {"llm_request_failed": 5} and summary.out["pending"] == 1
    assert sum(summary.failures.values()) == summary.tokens.failed == 5


def test_summary_has_one_shape_for_every_stage(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, [Record(instruction=f"Task {i}.", output="ok", status="accepted") for i in range(3)])
    src.open("a").write("{not json\n")
    from dataforge.curate.export import ExportConfig, ExportStage

    summary = run_stage(ExportStage, src, tmp_path / "out.jsonl", ExportConfig(statuses=["accepted"]), progress=False)
    d = summary.to_dict()
    assert {"stage", "in", "out", "files", "bad_lines", "resumed", "tokens", "wall_s", "details"} <= set(d)
    assert d["stage"] == "export" and d["in"] == 3 and d["out"] == {"accepted": 3} and d["bad_lines"] == 1
    out = tmp_path / "out.jsonl"
    assert d["files"] == {"output": str(out), "bad_lines": f"{out}.bad-lines.jsonl"}
    assert d["tokens"]["total"] == 0 and d["model"] is None


def _readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### How a stage works"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_stage_runs_resumes_and_refuses_other_settings(tmp_path):
    """The README's ~30-line stage, as a newcomer would copy it: it runs through the same runner against a
    model, and gets resuming, the settings check and the failure accounting for free."""
    scope: dict = {}
    exec(compile(_readme_example(), "README example", "exec"), scope)
    stage_cls, cfg_cls = scope["TopicStage"], scope["TopicConfig"]
    src = tmp_path / "in.jsonl"
    write_records(src, list(read_records(SEEDS))[:3])
    out = tmp_path / "out.jsonl"

    def model(body):
        text = json.dumps(body)
        return Fault("400") if "given pairs" in text else "Everyday Writing"

    with LoopbackServer(model) as srv:
        summary = run_stage(stage_cls, src, out, cfg_cls(), backend=_backend(srv), progress=False)
        first = srv.request_count
        got = list(read_records(out))
        assert summary.records_in == 3 and summary.tokens.requests == first == 3 and summary.tokens.failed == 1
        assert summary.out == {"pending": 2, "rejected": 1} and summary.details == {"named": 2}
        assert [r.topic for r in got if r.status != "rejected"] == ["Everyday Writing"] * 2
        assert len(summary.failures) == 1 and "400" in next(iter(summary.failures))
        assert all(r.reasons == ["topic:request_failed"] for r in got if r.status == "rejected")
        # a killed run's journal is resumed: what it finished is not asked again
        from dataforge.llm import make_llm
        from dataforge.stage import journal_header

        header = journal_header(stage_cls(cfg_cls()), src, make_llm(_backend(srv)))
        first_id = next(iter(read_records(src))).id
        SideFiles(out).journal.write_text(json.dumps({"header": header}) + "\n"
                                          + json.dumps({"id": first_id, "topic": "From The Journal"}) + "\n")
        srv.reset()
        resumed = run_stage(stage_cls, src, out, cfg_cls(), backend=_backend(srv), progress=False)
        assert resumed.resumed == 1 and srv.request_count == 2
        assert next(iter(read_records(out))).topic == "From The Journal"
        # other settings: refused with the option named; --restart starts over
        SideFiles(out).journal.write_text(json.dumps({"header": {**header, "config": {**header["config"], "seed": 1}}})
                                          + "\n")
        with pytest.raises(DataforgeError, match="options seed"):
            run_stage(stage_cls, src, out, cfg_cls(), backend=_backend(srv), progress=False)
        again = run_stage(stage_cls, src, out, cfg_cls(), backend=_backend(srv), progress=False, restart=True)
        assert again.out == summary.out and not SideFiles(out).journal.exists()
