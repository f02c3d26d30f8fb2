"""Budgets, prices and dry runs, against the real loopback server: a budgeted run stops within one batch
of its budget, writes and journals what it finished, and a re-run with a larger budget ends with what an
unbudgeted run writes; costs per operation; `--dry-run` projects the whole job from a sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from evolve_script import SEEDS, responder  # noqa: E402

from dataforge.errors import DataforgeError
from dataforge.generate.evolve import EvolveConfig, EvolveStage, run_evolve
from dataforge.generate.self_instruct import SelfInstructConfig, run_self_instruct
from dataforge.io import read_records
from dataforge.llm import BackendConfig
from dataforge.stage import SideFiles
from dataforge.stage.budget import Budget, Prices, make_budget
from dataforge.stage.estimate import estimate_stage
from dataforge.stage.summary import Tokens
from dataforge.testing.loopback import LoopbackServer, count_tokens, prompt_of

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "seeds.jsonl"
CONCURRENCY = 2


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return p


def _backend(srv: LoopbackServer, cache: Path | None) -> BackendConfig:
    return BackendConfig(backend="openai", base_url=srv.base_url, model="test", concurrency=CONCURRENCY,
                         cache_path=str(cache) if cache else None, no_cache=cache is None)


def _records(path: Path) -> list[dict]:
    rows = [r.model_dump(mode="json") for r in read_records(path)]
    for r in rows:
        r["lineage"].pop("timestamp")
    return rows


def test_prices_cost_and_budget_arithmetic():
    p = Prices(input=0.15, output=0.60)
    t = Tokens(prompt=2_000_000, completion=500_000)
    assert p.cost(t) == pytest.approx(0.30 + 0.30)
    b = Budget(prices=p, tokens=1000, spent_before=Tokens(prompt=600))
    assert b.reached(Tokens(prompt=399)) is None
    assert b.reached(Tokens(completion=400)) == "token budget of 1,000 reached"
    assert Budget(prices=p, usd=1.0).reached(Tokens(completion=1_666_666)) is None
    assert "dollar budget" in Budget(prices=p, usd=1.0).reached(Tokens(completion=1_666_667))
    with pytest.raises(DataforgeError, match="needs prices"):
        make_budget(budget_usd=1.0)
    with pytest.raises(DataforgeError, match="--price-in and --price-out"):
        make_budget(price_in=1.0)
    assert make_budget() is None


def test_a_budgeted_evolve_stops_within_one_batch_and_resumes_to_the_unbudgeted_output(seeds, tmp_path):
    cfg = EvolveConfig(rounds=3, keep_failed=True, max_in_flight=4)
    with LoopbackServer(responder) as srv:
        full = run_evolve(seeds, tmp_path / "full.jsonl", cfg, backend=_backend(srv, None), progress=False)
        budget_tokens = full.tokens.total // 2
        srv.reset()
        out = tmp_path / "budgeted.jsonl"
        cache = tmp_path / "cache.sqlite"
        stopped = run_evolve(seeds, out, cfg, backend=_backend(srv, cache), progress=False,
                             budget=Budget(tokens=budget_tokens))
        # one request's worst case: its prompt plus all the completion tokens it may ask for
        biggest = max(count_tokens(prompt_of(b)) + int(b.get("max_tokens") or 0) for b in srv.requests)

        assert stopped.stopped == f"token budget of {budget_tokens:,} reached"
        spent = stopped.budget["spent_tokens"]
        assert budget_tokens <= spent <= budget_tokens + CONCURRENCY * biggest  # within one batch in flight
        assert spent == stopped.tokens.total and stopped.tokens.total < full.tokens.total
        # what it finished is written (a prefix of every chain) and journaled
        written = _records(out)
        assert 0 < len(written) < len(_records(tmp_path / "full.jsonl"))
        assert all(r in _records(tmp_path / "full.jsonl") for r in written)
        journal = SideFiles(out).journal
        assert journal.is_file() and stopped.details["steps_not_done"] > 0

        # the same budget again: the journal remembers the spending, so it stops before sending anything
        srv.reset()
        again = run_evolve(seeds, out, cfg, backend=_backend(srv, cache), progress=False,
                           budget=Budget(tokens=budget_tokens))
        assert again.stopped and srv.request_count == 0 and again.resumed > 0

        # a larger budget resumes and ends with exactly what the unbudgeted run wrote
        done = run_evolve(seeds, out, cfg, backend=_backend(srv, cache), progress=False,
                          budget=Budget(tokens=10 * full.tokens.total))
    assert done.stopped is None and done.resumed > 0 and not journal.exists()
    assert _records(out) == _records(tmp_path / "full.jsonl")
    assert done.budget["spent_tokens"] >= spent and done.budget["stopped"] is None


def test_costs_per_operation_in_the_summary(seeds, tmp_path):
    prices = Prices(input=1.0, output=4.0)
    with LoopbackServer(responder) as srv:
        s = run_evolve(seeds, tmp_path / "o.jsonl", EvolveConfig(rounds=1), backend=_backend(srv, None),
                       progress=False, budget=Budget(prices=prices))
    ops = s.tokens_by_operation
    assert "answer" in ops and any(op.startswith("evol_") for op in ops)  # named by their prompt templates
    assert set(s.cost_by_operation) == set(ops)
    for op, t in ops.items():
        assert s.cost_by_operation[op] == pytest.approx((t.prompt * 1.0 + t.completion * 4.0) / 1e6, abs=1e-6)
    assert s.cost_usd == pytest.approx(sum(s.cost_by_operation.values()), abs=1e-5)
    assert s.budget is None and s.seconds_per_request is not None and s.seconds_per_request > 0


def test_a_budgeted_self_instruct_writes_only_finished_tasks_then_resumes(tmp_path):
    from test_self_instruct import responder as si_responder

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(line + "\n" for line in EXAMPLES.read_text().splitlines()[:12]))
    cfg = SelfInstructConfig(num_instructions=12, requests_per_batch=2, max_in_flight=2)
    with LoopbackServer(si_responder) as srv:
        full = run_self_instruct(seeds, tmp_path / "full.jsonl", cfg, backend=_backend(srv, None), progress=False)
        cache = tmp_path / "cache.sqlite"
        out = tmp_path / "si.jsonl"
        ops = full.tokens_by_operation  # stop half way through the instances (bootstrap and classification done)
        instances = sum(t.total for op, t in ops.items() if op.startswith("si_instances"))
        assert set(ops) >= {"si_bootstrap", "si_is_classification"} and instances
        stopped = run_self_instruct(seeds, out, cfg, backend=_backend(srv, cache), progress=False,
                                    budget=Budget(tokens=full.tokens.total - instances // 2))
        assert stopped.stopped and stopped.details["tasks_not_done"] > 0
        part = _records(out)
        complete = {r["meta"]["task_id"] for r in part}
        # every task written has its classification and instances; none is half done
        for r in part:
            assert r["task"] in ("classification", "generation") and r["output"]
        assert len(complete) < full.details["new_tasks"]
        done = run_self_instruct(seeds, out, cfg, backend=_backend(srv, cache), progress=False)
    assert done.stopped is None and _records(out) == _records(tmp_path / "full.jsonl")


def test_evolve_dry_run_projects_the_whole_job_within_25_percent(tmp_path):
    """The issue's must-show: the dry run's projection against what the whole job then uses."""
    from pipeline_helpers import scripted_responder

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(EXAMPLES.read_text())
    cfg = EvolveConfig(rounds=3)
    with LoopbackServer(scripted_responder) as srv:  # rewrites that grow, answers of 40-70 words, a judge
        est = estimate_stage(EvolveStage(cfg), seeds, backend=_backend(srv, tmp_path / "dry.sqlite"),
                             budget=Budget(prices=Prices(input=0.15, output=0.60)))
        sample_requests = srv.request_count
        full = run_evolve(seeds, tmp_path / "full.jsonl", cfg, backend=_backend(srv, tmp_path / "fresh.sqlite"),
                          progress=False)
    assert est.sample["requests"] == sample_requests and est.sample["records"] == 4
    assert est.scale == pytest.approx(25 * 3 / 4)
    p, t = est.projected, full.tokens
    for projected, used in ((p.requests, t.requests), (p.prompt_tokens, t.prompt),
                            (p.completion_tokens, t.completion), (p.total_tokens, t.total)):
        assert abs(projected - used) <= 0.25 * used, (projected, used)
    assert p.cost_usd == pytest.approx((p.prompt_tokens * 0.15 + p.completion_tokens * 0.60) / 1e6, rel=1e-3)
    assert p.wall_s is not None and est.records_out is not None


def test_dry_run_cli_prints_the_projection_and_writes_nothing(seeds, tmp_path, capsys):
    from dataforge.cli import main

    out = tmp_path / "never.jsonl"
    with LoopbackServer(responder) as srv:
        with pytest.raises(SystemExit) as exit_:
            main(["evolve", str(seeds), "-o", str(out), "--base-url", srv.base_url, "--model", "test",
                  "--cache", str(tmp_path / "c.sqlite"), "--dry-run", "--price-in", "1", "--price-out", "2", "--json"])
    assert exit_.value.code == 0 and not out.exists() and not SideFiles(out).journal.exists()
    est = json.loads(capsys.readouterr().out)
    assert est["stage"] == "evolve" and est["projected"]["requests"] > 0 and est["projected"]["cost_usd"] > 0


def test_budget_stop_exits_3_and_a_model_free_stage_refuses_budget_options(seeds, tmp_path, capsys):
    from dataforge.cli import main

    with LoopbackServer(responder) as srv:
        with pytest.raises(SystemExit) as exit_:
            main(["evolve", str(seeds), "-o", str(tmp_path / "o.jsonl"), "--base-url", srv.base_url, "--model",
                  "test", "--no-cache", "--budget-tokens", "300", "--rounds", "2"])
    assert exit_.value.code == 3 and "Re-run with a larger budget" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(seeds), "-o", str(tmp_path / "e.jsonl"), "--budget-tokens", "10"])
    assert exit_.value.code == 2


def _pipeline(tmp_path: Path, base_url: str, seeds: Path) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(f"""\
name: budgeted
input: {seeds}
backend: {{backend: openai, base_url: {base_url}, model: test, concurrency: 2}}
prices: {{input: 0.5, output: 1.5}}
stages:
  - stage: evolve
    rounds: 2
    keep_failed: true
  - stage: export
    statuses: [pending, rejected]
""")
    return p


def test_a_budgeted_pipeline_stops_on_record_and_resumes_to_the_unbudgeted_result(tmp_path, capsys):
    from dataforge.cli import main
    from pipeline_helpers import load_jsonl, scripted_responder, small_seeds

    def run(run_dir: str, *extra: str) -> int:
        with pytest.raises(SystemExit) as exit_:
            main(["run", str(job), "--run-dir", str(tmp_path / run_dir), "--cache", str(tmp_path / f"{run_dir}.sqlite"),
                  *extra])
        return exit_.value.code

    seeds = small_seeds(tmp_path, 6)
    with LoopbackServer(scripted_responder) as srv:
        job = _pipeline(tmp_path, srv.base_url, seeds)
        assert run("free") == 0
        free = json.loads((tmp_path / "free" / "manifest.json").read_text())
        used = free["totals"]["tokens"]["total"]
        assert run("capped", "--budget-tokens", str(used // 2)) == 3
        capped = json.loads((tmp_path / "capped" / "manifest.json").read_text())
        assert capped["stages"]["evolve"]["status"] == "stopped-budget" and "export" not in capped["stages"]
        assert "Re-run with a larger budget" in capsys.readouterr().err
        assert run("capped", "--budget-tokens", str(used * 4)) == 0
    done = json.loads((tmp_path / "capped" / "manifest.json").read_text())
    assert done["stages"]["evolve"]["status"] == "done" and done["stages"]["export"]["status"] == "done"
    assert load_jsonl(tmp_path / "capped" / "export" / "records.jsonl") == \
        load_jsonl(tmp_path / "free" / "export" / "records.jsonl")
    # the manifest sums every attempt's tokens, and prices them per operation
    assert done["totals"]["tokens"]["total"] >= used // 2
    t = done["totals"]
    assert t["cost_usd"] == pytest.approx((t["tokens"]["prompt"] * 0.5 + t["tokens"]["completion"] * 1.5) / 1e6,
                                          abs=1e-6)
    assert set(t["cost_by_operation"]) == set(t["tokens_by_operation"]) and "answer" in t["cost_by_operation"]


def test_pipeline_dry_run_estimates_the_model_stages_and_writes_nothing(tmp_path, capsys):
    from dataforge.cli import main
    from pipeline_helpers import scripted_responder, small_seeds

    seeds = small_seeds(tmp_path, 6)
    with LoopbackServer(scripted_responder) as srv:
        job = _pipeline(tmp_path, srv.base_url, seeds)
        with pytest.raises(SystemExit) as exit_:
            main(["run", str(job), "--run-dir", str(tmp_path / "run"), "--cache", str(tmp_path / "c.sqlite"),
                  "--dry-run"])
        sent = srv.request_count
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and sent > 0 and not (tmp_path / "run" / "manifest.json").exists()
    assert "evolve: dry run on 4 of 6 records, 1 of 2 rounds" in out and "whole job (6 input records, x3.0)" in out
    assert "cost" in out and "$" in out  # the YAML's prices


def test_a_separate_judge_models_requests_are_metered_with_the_stage(tmp_path):
    """filter --judge-model on its own server: its requests count in the summary's tokens, costs and budget."""
    from dataforge.quality.gate import FilterConfig, run_filter
    from dataforge.testing.loopback import last_user_message

    def judge(body):
        text = last_user_message(body)
        return json.dumps({"score": 3}) if "Rate how complex" in text else "no" if "contradict" in text else "yes"

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Name {k} fruits that grow in cold places.",
                                       "output": f"Apples, pears and {k} kinds of cherries grow there."}) + "\n"
                           for k in range(2, 5)))
    cfg = FilterConfig(judges="on", refine_rounds=0, dedup=False, judge_model="critic")
    with LoopbackServer(lambda body: "draft", models=("writer",)) as gen, \
            LoopbackServer(judge, models=("critic",)) as jud:
        cfg = cfg.model_copy(update={"judge_base_url": jud.base_url})
        s = run_filter(src, tmp_path / "out.jsonl", cfg, backend=BackendConfig(
            backend="openai", base_url=gen.base_url, model="writer", no_cache=True), progress=False,
            budget=Budget(prices=Prices(input=1.0, output=1.0)))
        judged = jud.request_count
    assert judged >= 9 and s.tokens.requests == judged  # every judge request is on the stage's meter
    assert any(op.startswith("judge_") for op in s.tokens_by_operation) and s.cost_usd > 0


def test_self_instruct_dry_run_scales_one_batch_to_the_tasks_asked_for(tmp_path):
    """Self-instruct's sample is one bootstrap batch; the job is (tasks asked for / tasks the batch kept)
    times larger, and the projection lands near what the whole run then uses."""
    from test_self_instruct import responder as si_responder

    from dataforge.generate.self_instruct import SelfInstructStage

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(line + "\n" for line in EXAMPLES.read_text().splitlines()[:12]))
    cfg = SelfInstructConfig(num_instructions=12, requests_per_batch=2, max_in_flight=2)
    with LoopbackServer(si_responder) as srv:
        est = estimate_stage(SelfInstructStage(cfg), seeds, backend=_backend(srv, tmp_path / "dry.sqlite"))
        sample_requests = srv.request_count
        full = run_self_instruct(seeds, tmp_path / "full.jsonl", cfg, backend=_backend(srv, tmp_path / "f.sqlite"),
                                 progress=False)
    assert est.sample["requests"] == sample_requests > 0
    assert est.scale is not None and est.scale > 1 and est.sample["records"] == 12
    p, t = est.projected, full.tokens
    assert p.cost_usd is None  # no prices given: no cost, never a made-up one
    for projected, used in ((p.requests, t.requests), (p.total_tokens, t.total)):
        assert abs(projected - used) <= 0.25 * used, (projected, used)


def test_magpie_dry_run_needs_no_input_and_projects_the_whole_job_within_25_percent(tmp_path):
    """Magpie's sample is one batch of query requests with no input at all; the job is its -n over the
    queries that batch kept."""
    import random

    from dataforge.generate.magpie import MagpieConfig, MagpieStage
    from dataforge.stage import run_stage

    words = [f"{a}{b}" for a in ("bra", "cle", "dro", "fli", "gra", "plo", "stu", "tri") for b in
             ("ck", "mp", "nt", "sh", "ve", "rd", "lk", "ft")]

    def reply(body: dict) -> str:
        if "prompt" in body:  # a query: a question of its own, made from the request's seed
            return "How do I " + " ".join(random.Random(body["seed"]).sample(words, 7)) + " today?<|im_end|>"
        return "An answer about " + body["messages"][-1]["content"][9:60]

    template = tmp_path / "chatml.jinja"
    template.write_text("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    cfg = MagpieConfig(num=40, requests_per_batch=4, chat_template=str(template))
    with LoopbackServer(reply) as srv:
        est = estimate_stage(MagpieStage(cfg), None, backend=_backend(srv, tmp_path / "dry.sqlite"),
                             budget=Budget(prices=Prices(input=1.0, output=2.0)))
        sample_requests = srv.request_count
        full = run_stage(MagpieStage(cfg), None, tmp_path / "full.jsonl", backend=_backend(srv, tmp_path / "f.sqlite"),
                         progress=False)
    assert est.sample["requests"] == sample_requests and 4 < sample_requests <= 8  # 4 queries, their answers
    assert full.details["made"] == 40 and est.scale == pytest.approx(40 / (sample_requests - 4))
    p, t = est.projected, full.tokens
    for projected, used in ((p.requests, t.requests), (p.total_tokens, t.total)):
        assert abs(projected - used) <= 0.25 * used, (projected, used)
    assert p.cost_usd == pytest.approx((p.prompt_tokens * 1.0 + p.completion_tokens * 2.0) / 1e6, rel=1e-3)
