"""Pure-CPU work on local worker processes (`dataforge.stage.procs`): results in batch order, each worker
opened once, errors surfacing in the caller, and `decontaminate` writing the same bytes with workers as
without."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dataforge.llm import run_sync
from dataforge.stage import LocalMapper, Work
from dataforge.stage import procs


class Squares(Work):
    """Returns (pid, times opened in that process, squares); fails on a batch holding `fail_on`."""

    def __init__(self, processes: int, fail_on: int | None = None):
        self.processes, self.fail_on, self.opened = processes, fail_on, 0

    def open(self, llm) -> None:
        self.opened += 1

    def run(self, batch: list[int]):
        if self.fail_on in batch:
            raise ValueError(f"bad batch {batch}")
        return os.getpid(), self.opened, [x * x for x in batch]


class WithModel(Squares):
    def uses_llm(self) -> bool:
        return True


def _collect(mapper: LocalMapper, work: Work, batches) -> list:
    async def go():
        return [r async for r in mapper.map(work, batches)]
    return run_sync(go())


def test_batches_run_in_workers_and_come_back_in_order():
    batches = [list(range(k, k + 3)) for k in range(0, 60, 3)]
    got = _collect(LocalMapper(), Squares(processes=2), iter(batches))
    assert [sq for _, _, sq in got] == [[x * x for x in b] for b in batches]
    pids = {pid for pid, _, _ in got}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {opened for _, opened, _ in got} == {1}  # each worker opened the work once, not per batch


def test_one_process_or_a_model_keeps_the_work_here():
    for work in (Squares(processes=0), WithModel(processes=4)):
        got = _collect(LocalMapper(), work, iter([[1, 2], [3]]))
        assert got == [(os.getpid(), 1, [1, 4]), (os.getpid(), 1, [9])]


def test_an_error_in_a_worker_reaches_the_caller():
    with pytest.raises(ValueError, match=r"bad batch \[6, 7\]"):
        _collect(LocalMapper(), Squares(processes=2, fail_on=7), iter([[k, k + 1] for k in range(0, 40, 2)]))


def test_default_processes_leave_one_core_to_reading_and_writing(monkeypatch):
    for cores, want in ((None, 0), (1, 0), (2, 1), (3, 2), (8, 7)):
        monkeypatch.setattr(procs.os, "cpu_count", lambda c=cores: c)
        assert procs.default_processes() == want


def test_decontaminate_with_workers_writes_what_one_process_writes(tmp_path):
    from dataforge.quality import decontaminate as dc

    item = "the quick brown fox jumps over the lazy dog near the old river bank today said ann"
    bench = tmp_path / "bench.txt"
    bench.write_text(f"{item}\nanother benchmark question of enough words to index as one item here\n", encoding="utf-8")
    rows = []
    for k in range(2600):  # three batches of 1,024 and a part
        if k % 97 == 0:
            rows.append({"instruction": f"Story {k}.", "output": f"Once {item.upper()} end {k}."})
        elif k % 211 == 0:  # rejected upstream: passes unchanged and is not counted as checked
            rows.append({"instruction": f"Old {k}.", "output": item, "status": "rejected", "reasons": ["upstream"]})
        else:
            rows.append({"instruction": f"Write line {k} about apples.", "output": f"Apples number {k} are red."})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summaries = {}
    for workers in (0, 2):
        cfg = dc.DecontaminateConfig(benchmarks=[str(bench)], workers=workers)
        summaries[workers] = dc.run_decontaminate(data, tmp_path / f"out{workers}.jsonl", cfg, progress=False)
    for suffix in ("", ".rejected.jsonl"):
        one = Path(f"{tmp_path}/out0.jsonl{suffix}").read_bytes()
        assert one and one == Path(f"{tmp_path}/out2.jsonl{suffix}").read_bytes()
    d1, d2 = summaries[0].details, summaries[2].details
    upstream = sum(1 for k in range(2600) if k % 97 and k % 211 == 0)
    assert d1["contaminated"] == d2["contaminated"] == len(range(0, 2600, 97))
    assert d1["checked"] == d2["checked"] == 2600 - upstream
    rejected = [json.loads(line) for line in open(tmp_path / "out2.jsonl.rejected.jsonl", encoding="utf-8")]
    assert [r["instruction"] for r in rejected][:3] == ["Story 0.", "Story 97.", "Story 194."]
    assert rejected[0]["reasons"] == ["contaminated:bench.txt:1"]


MARK = {"value": "set at import"}


class Peek(Work):
    """Returns what this process sees of MARK (forked workers see the parent's state at the fork)."""

    processes = 2

    def run(self, batch):
        return MARK["value"], batch


def test_workers_are_forked_and_only_a_few_batches_are_in_flight():
    MARK["value"] = "set at run time"
    pulled, seen = [0], []

    def batches():
        for k in range(40):
            pulled[0] += 1
            yield [k]

    async def go():
        async for mark, batch in LocalMapper().map(Peek(), batches()):
            seen.append((mark, batch, pulled[0]))
    run_sync(go())
    assert [b for _, b, _ in seen] == [[k] for k in range(40)]
    assert {m for m, _, _ in seen} == {"set at run time"}  # forked, not spawned (a spawn re-imports)
    # at most two batches per worker ahead of the one handed back
    assert max(p - k for k, (_, _, p) in enumerate(seen)) <= 2 * Peek.processes
