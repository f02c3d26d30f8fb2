"""balance's stage plumbing, by hand: which side files count, which output formats can carry dropped records,
which embedder is used, the per-record state's embeddings on disk, and the topics of a state that holds no
row; where a complexity level comes from. Fast: no model is loaded."""

from __future__ import annotations

import numpy as np
import pytest

from dataforge.curate.balance import BalanceConfig, BalanceStage, run_balance
from dataforge.curate.balance_state import BalanceState
from dataforge.curate.levels import LevelScheme, complexity_of, level_of
from dataforge.errors import DataforgeError
from dataforge.io import read_records, write_records
from dataforge.records import Record


def _rec(i: int, complexity: float = 2.0, **kw) -> Record:
    return Record(instruction=f"task {i}", output=f"answer {i}", topic="t", complexity=complexity, **kw)


def test_upstream_files_add_to_the_gate_side_files(tmp_path):
    """--upstream files count on top of <in>.rejected.jsonl / <in>.review.jsonl, not instead of them."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(0), _rec(1)])
    write_records(tmp_path / "in.jsonl.rejected.jsonl", [_rec(5, status="rejected", reasons=["gate:x"])])
    write_records(tmp_path / "in.jsonl.review.jsonl", [_rec(6, status="review", reasons=["gate:judge"])])
    extra = tmp_path / "evolve.rejected.jsonl"
    write_records(extra, [_rec(7, status="rejected", reasons=["evolve:y"]), _rec(8, status="rejected", reasons=["evolve:y"])])
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, upstream=[str(extra)]), progress=False)
    assert s.details["upstream_counted"] == 4 and s.records_in == 2 and s.details["kept"] == 2


def test_dropped_records_stay_in_a_parquet_output_with_their_reason(tmp_path):
    """--keep-dropped writes the dropped records into the output with status and reason: record and parquet
    outputs carry both, every other format is refused with the reason why."""
    src = tmp_path / "in.jsonl"
    write_records(src, [_rec(0, scores={"coherence": 0.9}), _rec(1, scores={"coherence": 0.2}), _rec(2, 8.0)])
    cfg = dict(reuse_topics=True, keep_dropped=True, levels_target="low=1,high=1", topic_cap_ratio=None)
    out = tmp_path / "out.parquet"
    s = run_balance(src, out, BalanceConfig(out_format="parquet", **cfg), progress=False)
    assert s.details["kept"] == 2 and "rejected" not in s.files and not (tmp_path / "out.parquet.rejected.jsonl").exists()
    got = {r.id: r for r in read_records(out)}
    assert len(got) == 3
    assert [r.reasons for r in got.values() if r.status == "rejected"] == [["balance:t/low"]]
    dropped = next(r for r in got.values() if r.status == "rejected")
    assert dropped.instruction == "task 1"  # the lower-scored of the two low records
    for fmt in ("alpaca", "chat", "sharegpt"):
        with pytest.raises(DataforgeError) as err:
            run_balance(src, tmp_path / "o.jsonl", BalanceConfig(out_format=fmt, **cfg), progress=False)
        assert str(err.value) == (f"--keep-dropped needs --to record or parquet: {fmt} has no status/reasons to "
                                  "tell dropped records from kept ones")


def test_an_input_that_arrived_all_rejected_keeps_nothing_and_counts_everything(tmp_path):
    """No candidate at all: nothing kept, every record goes to the rejects file with the gate's reason, the
    summary counts them as arrived rejected."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(i, status="rejected", reasons=["gate:coherence"]) for i in range(3)])
    s = run_balance(src, out, BalanceConfig(reuse_topics=True), progress=False)
    d = s.details
    assert d["candidates"] == 0 and d["kept"] == 0 and d["arrived_rejected"] == 3 and d["dropped_by_balance"] == 0
    assert d["by_reason"] == {"gate": 3} and s.out == {"rejected": 3} and out.read_text() == ""
    assert [r.reasons for r in read_records(tmp_path / "out.jsonl.rejected.jsonl")] == [["gate:coherence"]] * 3


def test_the_embedder_option_is_the_one_used(tmp_path):
    """--embedder names the model folder that embeds the prompts: a folder that holds no model is refused
    (the default model is never used in its place)."""
    src = tmp_path / "in.jsonl"
    write_records(src, [_rec(0), _rec(1)])
    missing = tmp_path / "no-model"
    with pytest.raises(DataforgeError, match=f"--embedder {missing}: not a local sentence-transformers model"):
        run_balance(src, tmp_path / "out.jsonl", BalanceConfig(embedder=str(missing)), progress=False)


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_a_state_without_rows_has_no_topics(tmp_path, method):
    """The topics of a state that embedded nothing: no label, no key, k 0, the method asked for (no
    clustering of an empty matrix), and no duplicate id. run_stage refuses an empty input, so this guards
    the stage's own use."""
    stage = BalanceStage(BalanceConfig(method=method))
    stage.state = BalanceState(tmp_path / "work", stage.scheme, seed=0)
    labels, keys, info = stage._topics(ctx=None)
    assert isinstance(labels, np.ndarray) and labels.shape == (0,) and labels.dtype == np.int64
    assert keys == [] and info == {"topics": {}, "method": method, "k": 0}
    assert stage.state.duplicate_ids() == 0


def test_the_state_appends_embeddings_to_a_file_in_its_work_folder(tmp_path):
    """Embeddings go to disk as float32 rows in the order they come, batch after batch (bounded memory), in
    a work folder the state makes (parents too) and empties first (what a killed run left is not reused)."""
    work = tmp_path / "scratch" / "work"
    state = BalanceState(work, LevelScheme(), seed=0)
    assert work.is_dir() and state.vectors is None
    (work / "embeddings.f32").write_bytes(b"left by a killed run")
    state = BalanceState(work, LevelScheme(), seed=0)
    assert list(work.iterdir()) == []
    a = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    b = np.array([[1.5, -2.0, 0.25]], dtype=np.float32)
    state.add_vectors(a)
    state.add_vectors(b)
    rows = state.vectors.read(0, state.vectors.n)
    assert state.vectors.n == 3 and rows.shape == (3, 3) and rows.dtype == np.float32
    assert np.array_equal(rows, np.vstack([a.astype(np.float32), b]))
    assert state.vectors.path.parent == work  # removed with the stage's scratch folder


def test_the_complexity_level_comes_from_the_field_else_the_gate_score_else_the_depth():
    """record.complexity first, then the gate's scores["complexity"] (an int is read as a number), then the
    evolution round; neither: unrated."""
    assert complexity_of(Record(instruction="x", scores={"complexity": 8})) == 8.0
    assert level_of(Record(instruction="x", scores={"complexity": 8})) == "high"
    assert level_of(Record(instruction="x", scores={"complexity": 5.0}, lineage={"round": 3})) == "mid"
    assert level_of(Record(instruction="x", complexity=2.0, scores={"complexity": 9.0})) == "low"
    assert complexity_of(Record(instruction="x", scores={"coherence": 0.9})) is None
    assert level_of(Record(instruction="x", scores={"coherence": 0.9})) == "unrated"
