"""The gate says what was checked and by whom: a separate judge model (--judge-model), meta.gate on every
record, the run's correctness summary, and self-consistency where no model judge checks correctness."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.io import read_records
from dataforge.llm import BackendConfig, make_llm
from dataforge.quality.gate import FilterConfig, run_filter
from dataforge.testing.loopback import LoopbackServer, last_user_message

ROWS = [{"instruction": "Tom has 3 apples and buys 2 more. How many apples does he have?", "output": "5"},
        {"instruction": "Name a primary colour.", "output": "Red"},
        {"instruction": "Explain in two sentences why the sky is blue.",
         "output": "Sunlight scatters off air molecules, and blue light scatters the most. So the sky looks blue."}]


def _src(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return src


def _all(out):
    from pathlib import Path

    return [r for p in (out, Path(f"{out}.review.jsonl"), Path(f"{out}.rejected.jsonl")) if p.stat().st_size
            for r in read_records(p)]


def test_judge_model_on_its_own_server(tmp_path):
    def generator(body):  # the generator never judges here
        return "draft"

    def judge(body):
        text = last_user_message(body)
        return json.dumps({"score": 3}) if "Rate how complex" in text else "no" if "contradict" in text else "yes"

    out = tmp_path / "clean.jsonl"
    with LoopbackServer(generator, models=("writer",)) as gen, LoopbackServer(judge, models=("critic",)) as jud:
        res = CliRunner().invoke(app, ["filter", str(_src(tmp_path)), "-o", str(out), "--judges", "on",
                                       "--refine-rounds", "0", "--no-dedup", "--no-cache", "--base-url", gen.base_url,
                                       "--model", "writer", "--judge-model", "critic", "--judge-base-url", jud.base_url])
        assert res.exit_code == 0, res.output
        assert gen.request_count == 0 and jud.request_count >= 9  # 3 records x (alignment, contradiction, complexity)
        assert {b["model"] for b in jud.requests} == {"critic"}
    recs = list(read_records(out))
    assert len(recs) == 3 and all(r.meta["gate"]["judged_by"] == "model:critic" for r in recs)
    assert all(r.scores["alignment"] > 0.5 for r in recs)


def test_records_and_summary_say_what_was_checked(tmp_path):
    out = tmp_path / "clean.jsonl"
    # the reference set (examples/seeds.jsonl) fills the embedding-alignment pool to more than 16 prompts
    summary = run_filter(_src(tmp_path), out, FilterConfig(no_llm=True, dedup=False), progress=False).to_dict()
    recs = _all(out)
    assert len(recs) == 3
    by = {r.output: r.meta["gate"] for r in recs}
    assert by["5"] == {"judged_by": "heuristics", "signals": [], "unjudged": []}  # one word: no embedding alignment
    assert by[ROWS[2]["output"]]["judged_by"] == "embedding"
    c = summary["details"]["correctness"]
    accepted = summary["out"]["accepted"]
    assert c["accepted_without_model_judge"] == accepted and accepted >= 1
    assert c["note"].startswith(f"correctness was not checked by a model judge for {accepted} of {accepted}")
    assert summary["details"]["judge_model"] is None


def test_self_consistency_runs_where_no_judge_checks(tmp_path):
    """judges off, a model at hand: the samples disagree with '5' for the apples and agree on 'Red'."""
    def sampler(body):
        text = last_user_message(body)
        n = body.get("n", 1)
        return ["Red"] * n if "colour" in text else ["He has 4.", "4", "6", "5", "4"][:n]

    out = tmp_path / "clean.jsonl"
    with LoopbackServer(sampler, models=("gpt-4o",)) as srv:
        llm = make_llm(BackendConfig(base_url=srv.base_url, model="gpt-4o", no_cache=True))
        summary = run_filter(_src(tmp_path), out, FilterConfig(judges="off", dedup=False, no_reference=True),
                             llm=llm, progress=False).to_dict()["details"]
        assert srv.request_count == 2 and all(b["n"] == 5 for b in srv.requests)  # the free-form answer is not sampled
    recs = {r.output: r for r in _all(out)}
    assert recs["Red"].scores["consistency"] == 1.0 and "consistency" in recs["Red"].meta["gate"]["signals"]
    apples = recs["5"]
    assert apples.scores["consistency"] == 0.2 and apples.status == "review"
    assert "consistency:1/5 samples agree with 5 (others: 4, 6)" in apples.reasons
    assert summary["consistency"] == {"records_sampled": 2, "errors": 0} and summary["judges"] == "embedding"


def test_pipeline_judge_block_reaches_the_filter_stage(tmp_path):
    from dataforge.pipeline import RunOptions, load_pipeline
    from dataforge.pipeline.engine import Engine

    spec_path = tmp_path / "p.yaml"
    spec_path.write_text("name: p\ninput: in.jsonl\nbackend: {base_url: 'http://gen:8000/v1', model: writer}\n"
                         "judge: {model: critic}\nstages:\n  - stage: filter\n")
    (tmp_path / "in.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    engine = Engine(load_pipeline(spec_path), RunOptions(run_dir=str(tmp_path / "run"), progress=False))
    (st,) = engine.stages
    assert st.stage.cfg.judge_backend == {"base_url": "http://gen:8000/v1", "model": "critic"}
