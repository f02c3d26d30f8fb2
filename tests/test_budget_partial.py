"""A budget that stops `converse`, `pairs` or `magpie` part way: the run ends cleanly with every finished
record written (and nothing half done), and a re-run without the budget ends with what an unbudgeted
run writes. Against the real loopback server, with the request cache the re-run resumes from."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dataforge.io import read_records, write_records  # noqa: E402
from dataforge.llm import BackendConfig  # noqa: E402
from dataforge.stage import run_stage  # noqa: E402
from dataforge.stage.budget import Budget  # noqa: E402
from dataforge.testing import LoopbackServer  # noqa: E402


def _backend(srv: LoopbackServer, cache: Path | None) -> BackendConfig:
    return BackendConfig(backend="openai", base_url=srv.base_url, model="test", concurrency=2,
                         cache_path=str(cache) if cache else None, no_cache=cache is None)


def _rows(path: Path) -> list[dict]:
    rows = [r.model_dump(mode="json") for r in read_records(path)] if path.is_file() else []
    for r in rows:
        r["lineage"].pop("timestamp", None)
    return rows


def _stop_half_way_then_finish(stage_of, src: Path | None, tmp_path: Path, responder, cut=None):
    """(the full summary, rows written when stopped, the stopped summary, rows after the re-run); the
    budget is half the full run's tokens, or `cut(full summary)`."""
    with LoopbackServer(responder=responder) as srv:
        full = run_stage(stage_of(), src, tmp_path / "full.jsonl", backend=_backend(srv, None), progress=False)
        out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
        stopped = run_stage(stage_of(), src, out, backend=_backend(srv, cache), progress=False,
                            budget=Budget(tokens=cut(full) if cut else full.tokens.total // 2))
        part = _rows(out)
        done = run_stage(stage_of(), src, out, backend=_backend(srv, cache), progress=False)
    assert stopped.stopped and "token budget" in stopped.stopped and done.stopped is None
    assert stopped.tokens.total < full.tokens.total
    return full, part, stopped, _rows(out)


def test_a_budgeted_converse_writes_the_finished_conversations_then_resumes(tmp_path):
    from test_converse import _seeds, model

    from dataforge.generate.converse import ConverseConfig, ConverseStage

    src = _seeds(tmp_path, n=10)
    full, part, stopped, after = _stop_half_way_then_finish(
        lambda: ConverseStage(ConverseConfig(turns=3, max_in_flight=2, seed=4)), src, tmp_path, model)
    whole = _rows(tmp_path / "full.jsonl")
    assert 0 < len(part) < len(whole) == 10
    by_parent = {r["lineage"]["parents"][0]: r for r in whole}
    for r in part:  # every written conversation is finished: the same as in the unbudgeted run
        assert r == by_parent[r["lineage"]["parents"][0]] and len(r["turns"]) == 4
    assert after == whole


def test_a_budgeted_pairs_run_writes_the_finished_pairs_then_resumes(tmp_path):
    from test_pairs import evolved, obedient_when_cool

    from dataforge.generate.pairs import PairsConfig, PairsStage

    src = tmp_path / "evolved.jsonl"
    write_records(src, evolved(6))
    cfg = PairsConfig(temperatures=[0.2, 1.3], judges="off", include_output=False, max_in_flight=2, out_format="record")
    full, part, stopped, after = _stop_half_way_then_finish(lambda: PairsStage(cfg), src, tmp_path, obedient_when_cool)
    whole = _rows(tmp_path / "full.jsonl")
    assert 0 < len(part) < len(whole) == 6
    by_parent = {r["lineage"]["parents"][0]: r for r in whole}
    for r in part:
        assert r == by_parent[r["lineage"]["parents"][0]] and r["preference"]["kind"] == "verifiable"
    assert after == whole


def test_a_budgeted_magpie_writes_only_answered_queries_then_resumes(tmp_path):
    from test_magpie import CHATML, _responder

    from dataforge.generate.magpie import MagpieConfig, MagpieStage

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    cfg = MagpieConfig(num=4, requests_per_batch=8, chat_template=str(template), max_in_flight=1)
    full, part, stopped, after = _stop_half_way_then_finish(  # stop half way through the answers
        lambda: MagpieStage(cfg), None, tmp_path, _responder([]),
        cut=lambda f: f.tokens.total - f.tokens_by_operation["answer"].total // 2)
    whole = _rows(tmp_path / "full.jsonl")
    assert len(whole) == 4 and len(part) < 4  # the responder has four good, distinct queries
    answered = [r for r in part if r["status"] != "rejected"]
    assert answered and all(r["output"].startswith("An answer: ") for r in answered)
    by_instruction = {r["instruction"]: r for r in whole}
    for r in answered:
        assert r == by_instruction[r["instruction"]]
    assert stopped.details["answers"]["not_answered"] == 4 - len(answered)
    assert after == whole
