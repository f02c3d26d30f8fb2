"""Speculative pipelining (`speculate`): a child's next-round rewrite is requested while its answer is
pending. On the real loopback server with the scripted model (tests/evolve_script.py), where some
evolutions fail only after their answer (apology, stop words), the output must be the same bytes as
the round-by-round run, and every extra request must show up as a discarded speculative one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from evolve_script import SEEDS, responder  # noqa: E402

import dataforge.generate.evolve_step as evolve_step
from dataforge.generate.elimination import SORRY_SHORT, STOPWORDS_ONLY
from dataforge.generate.evolve import EvolveConfig, run_evolve
from dataforge.llm import BackendConfig
from dataforge.testing.loopback import LoopbackServer

DETAILS = ("rounds", "operations", "eliminated", "survival_rate", "duplicates_dropped", "steps_tokens")


def _run(seeds: Path, out: Path, speculate: bool, latency: float, **kw) -> tuple[dict, int, int]:
    with LoopbackServer(responder, latency=latency) as srv:
        backend = BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True)
        cfg = EvolveConfig(rounds=4, keep_failed=True, speculate=speculate, **kw)
        summary = run_evolve(seeds, out, cfg, backend=backend, progress=False)
        return summary, len(srv.requests), srv.max_in_flight


@pytest.mark.parametrize("extra", [{}, {"seed": 5, "ops": ["deepen", "complicate_input", "breadth", "add_constraints"]}])
def test_speculative_run_writes_the_same_bytes_as_round_by_round(tmp_path, monkeypatch, extra):
    # the only thing that differs between two runs is the clock in lineage.timestamp: fix it
    monkeypatch.setattr(evolve_step, "utc_now", lambda: "2026-01-01T00:00:00+00:00")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    plain, plain_requests, plain_peak = _run(seeds, tmp_path / "plain.jsonl", False, 0.02, **extra)
    spec, spec_requests, spec_peak = _run(seeds, tmp_path / "spec.jsonl", True, 0.05, **extra)

    assert (tmp_path / "spec.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()
    assert spec.records_in == plain.records_in and spec.out == plain.out
    for key in DETAILS:
        assert spec.details[key] == plain.details[key], key
    # failures after the answer happened, so speculative rewrites were thrown away ...
    assert plain.details["eliminated"].get(SORRY_SHORT, 0) + plain.details["eliminated"].get(STOPWORDS_ONLY, 0) > 0
    discarded = spec.details["speculative_discarded"]
    assert plain.details["speculative_discarded"] is None
    assert discarded["steps"] > 0 and discarded["requests"] > 0
    # ... and they are the only extra requests, counted honestly
    assert spec_requests == plain_requests + discarded["requests"]
    assert spec.tokens.requests == spec_requests
    # rewrites of the next round really were in flight next to this round's answers
    assert plain_peak <= len(SEEDS) < spec_peak
