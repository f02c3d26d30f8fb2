"""Bounded memory: what filter and balance hold grows by a few dozen bytes per input record, not by the
record. Python's allocations (numpy's included) are traced while a stage runs on n and on 4n records;
the growth of the peak per added record is compared with a bound. Holding the decided records until
dedup (the old gate: ~23 KB a record) or the input (the old balance) fails it by far."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from dataforge.curate.balance import BalanceConfig, BalanceStage
from dataforge.io import write_records
from dataforge.quality.dedup_state import DedupState, Features
from dataforge.quality.rules import DedupRule, SemanticDedup
from dataforge.records import Record
from dataforge.stage import run_stage

# Balance keeps per record its status, level, quality, tie-break digest and topic (~50 bytes); the bound
# leaves room for array growth and allocator slack, and is far below one record (a few KB here).
BOUND = 400

TOPICS = ("cooking", "python", "math", "travel")


def _records(n: int) -> list[Record]:
    """n records over 40 distinct prompts (so embeddings are cached after the first run), long outputs
    (so a held record would cost KBs), every tenth rejected upstream."""
    out = []
    for i in range(n):
        k = i % 40
        topic = TOPICS[k % 4]
        out.append(Record(id=f"r{i}", instruction=f"Describe {topic} idea number {k} in a few sentences.",
                          output=f"Idea {k} about {topic}: " + "it is a careful, useful and clear idea. " * 30,
                          topic=topic, complexity=1 + (i * 7) % 9, status="rejected" if i % 10 == 9 else "accepted",
                          reasons=["gate:upstream"] if i % 10 == 9 else [],
                          scores={"coherence": (i * 37 % 100) / 100, "alignment": (i * 53 % 100) / 100}))
    return out


def _peak(stage, src: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        run_stage(stage, src, out, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _growth_per_record(tmp_path: Path, make_stage, n: int) -> tuple[float, int]:
    peaks = {}
    for size in (n // 4, n // 4, n):  # the first run pays one-time costs (model load, embeddings), untimed
        src = tmp_path / f"in{size}.jsonl"
        write_records(src, _records(size))
        stage = make_stage()
        peaks[size] = _peak(stage, src, tmp_path / f"out{size}.jsonl")
    record_bytes = len(_records(1)[0].model_dump_json())
    return (peaks[n] - peaks[n // 4]) / (n - n // 4), record_bytes


def _dedup_peak(tmp_path: Path, n: int) -> tuple[int, dict[str, int]]:
    """Peak traced memory of the gate's dedup state for n records (every fourth an exact copy, every
    fourth a near copy: one signature value changed), from construction through `decide`."""
    rng = np.random.default_rng(n)
    rule = DedupRule(semantic=SemanticDedup(enabled=False))
    tracemalloc.start()
    try:
        state = DedupState(n, tmp_path / f"work{n}", rule, enabled=True)
        for s in range(0, n, 1024):  # what the gate's batches put, a batch at a time
            idx = np.arange(s, min(n, s + 1024))
            keys = rng.integers(0, 256, (len(idx), 20), dtype=np.uint8)
            sigs = rng.integers(0, 2**32, (len(idx), 128), dtype=np.uint32)
            for copy in (1, 2):  # an exact copy has its base's signature too
                sigs[copy::4] = sigs[0::4][:len(sigs[copy::4])]
            keys[1::4] = keys[0::4][:len(keys[1::4])]
            sigs[2::4, 0] += 1
            state.offset[idx], state.rank[idx], state.quality[idx] = idx, 0, rng.random(len(idx))
            state.put([], [], Features(idx, keys, sigs, None))
        counts = state.decide().counts
        return tracemalloc.get_traced_memory()[1], counts
    finally:
        tracemalloc.stop()


def test_dedup_state_memory_per_record_is_compact(tmp_path):
    """The gate's global step: 37 bytes of state per record in memory, signatures on disk; the near
    pass's transient arrays (band hashes, buckets, the suspects' signatures and buckets) come on top:
    here, with half the records near-duplicate suspects, about 0.9 KB a record. Under 2 KB keeps a
    million records under 2 GiB; holding the records (the old gate: 23 KB each) fails it by far."""
    (small, c1), (big, c2) = _dedup_peak(tmp_path, 8192), _dedup_peak(tmp_path, 32768)
    assert c2["exact"] == 32768 // 4 and c2["near"] == 32768 // 4  # every planted copy was found
    grow = (big - small) / (32768 - 8192)
    assert grow < 2048, f"dedup state grows by {grow:.0f} bytes per record"


def test_balance_memory_per_record_is_its_compact_state(tmp_path):
    grow, record = _growth_per_record(tmp_path, lambda: BalanceStage(BalanceConfig(reuse_topics=True, size=100)), 800)
    assert grow < BOUND, f"balance grows by {grow:.0f} bytes per input record"
    assert sum(1 for _ in open(tmp_path / "out800.jsonl")) == 100
