"""Balancing: a skewed synthetic corpus comes out at the target level mix, within each topic's cap, with
the best-scored records kept and every dropped record accounted for (file, status, reason)."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataforge.curate.balance import BalanceConfig, plan_selection, run_balance, waterfill
from dataforge.curate.levels import LevelScheme, level_of, parse_target
from dataforge.curate.steer import load_steering
from dataforge.errors import DataforgeError
from dataforge.io import write_records
from dataforge.records import Lineage, Record

TOPICS = ("cooking", "python", "math", "travel", "poetry")


def skewed_corpus(n: int = 900, seed: int = 1) -> list[Record]:
    """70% low / 22% mid / 8% high complexity; topic sizes 45/25/15/10/5%; 10% already rejected upstream."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = rng.choices(TOPICS, weights=(45, 25, 15, 10, 5))[0]
        complexity = rng.choices([rng.uniform(1, 3.9), rng.uniform(4, 6.9), rng.uniform(7, 10)], weights=(70, 22, 8))[0]
        status, reasons = ("rejected", ["gate:coherence<0.5"]) if rng.random() < 0.1 else ("accepted", [])
        out.append(Record(instruction=f"{topic} task number {i}", output=f"answer {i}", topic=topic,
                          complexity=round(complexity, 2), status=status, reasons=reasons,
                          scores={"coherence": round(rng.random(), 3), "alignment": round(rng.random(), 3)}))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[Record]]:
    records = skewed_corpus()
    path = tmp_path / "clean.jsonl"
    write_records(path, records)
    return path, records


def level_shares(rows: list[dict]) -> dict[str, float]:
    scheme = LevelScheme()
    counts = Counter(level_of(Record.model_validate(r), scheme) for r in rows)
    total = sum(counts.values())
    return {lv: counts[lv] / total for lv in scheme.names}


def check_accounting(inp: list[Record], kept: list[dict], dropped: list[dict]) -> None:
    """in == kept + dropped, nothing twice, every drop rejected with a reason naming its stage."""
    assert sorted(r.id for r in inp) == sorted(r["id"] for r in kept + dropped)
    assert all(r["status"] != "rejected" for r in kept)
    assert all(r["status"] == "rejected" and r["reasons"] for r in dropped)
    arrived_rejected = {r.id for r in inp if r.status == "rejected"}
    for r in dropped:
        if r["id"] in arrived_rejected:
            assert r["reasons"][-1].startswith("gate:")
        else:
            assert r["reasons"][-1] == f"balance:{r['topic']}/{level_of(Record.model_validate(r))}"


def test_uniform_target_on_skewed_corpus(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "final.jsonl"
    summary = run_balance(path, out, BalanceConfig(reuse_topics=True, topic_cap_ratio=None), progress=False)
    kept, dropped = read_jsonl(out), read_jsonl(Path(f"{out}.rejected.jsonl"))
    check_accounting(records, kept, dropped)
    shares = level_shares(kept)
    assert all(abs(s - 1 / 3) <= 0.01 for s in shares.values()), shares
    # the scarce level limits the output: all of its candidates are kept
    high_candidates = [r for r in records if r.status != "rejected" and level_of(r) == "high"]
    assert sum(1 for r in kept if level_of(Record.model_validate(r)) == "high") == len(high_candidates)
    assert summary.details["kept"] == len(kept) and summary.details["dropped_by_balance"] + summary.details["arrived_rejected"] == len(dropped)
    assert summary.details["by_reason"]["balance"] == summary.details["dropped_by_balance"] > 0


def test_given_target_and_best_scores_kept(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "final.jsonl"
    run_balance(path, out, BalanceConfig(reuse_topics=True, levels_target="low=0.2,mid=0.5,high=0.3",
                                         topic_cap_ratio=None), progress=False)
    kept, dropped = read_jsonl(out), read_jsonl(Path(f"{out}.rejected.jsonl"))
    check_accounting(records, kept, dropped)
    shares = level_shares(kept)
    for lv, want in {"low": 0.2, "mid": 0.5, "high": 0.3}.items():
        assert abs(shares[lv] - want) <= 0.01, shares
    # inside each (topic, level) cell nothing dropped by balance beats anything kept
    def score(r):
        return (r["scores"]["coherence"] + r["scores"]["alignment"]) / 2
    best_dropped, worst_kept = defaultdict(lambda: -1.0), defaultdict(lambda: 2.0)
    for r in kept:
        cell = (r["topic"], level_of(Record.model_validate(r)))
        worst_kept[cell] = min(worst_kept[cell], score(r))
    for r in dropped:
        if r["reasons"][-1].startswith("balance:"):
            cell = (r["topic"], level_of(Record.model_validate(r)))
            best_dropped[cell] = max(best_dropped[cell], score(r))
    assert best_dropped and all(best_dropped[c] <= worst_kept[c] for c in best_dropped if c in worst_kept)


def test_topic_cap_and_fair_spread(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "final.jsonl"
    summary = run_balance(path, out, BalanceConfig(reuse_topics=True, topic_cap=60), progress=False)
    kept = read_jsonl(out)
    per_topic = Counter(r["topic"] for r in kept)
    assert max(per_topic.values()) <= 60 and summary.details["topic_cap"] == 60
    assert set(per_topic) == set(TOPICS)                     # even the smallest topic keeps records
    shares = level_shares(kept)
    assert all(abs(s - 1 / 3) <= 0.02 for s in shares.values()), shares
    check_accounting(records, kept, read_jsonl(Path(f"{out}.rejected.jsonl")))


def test_keep_dropped_and_size(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "final.jsonl"
    summary = run_balance(path, out, BalanceConfig(reuse_topics=True, keep_dropped=True, size=90,
                                                   topic_cap_ratio=None), progress=False)
    rows = read_jsonl(out)
    assert not Path(f"{out}.rejected.jsonl").exists()
    assert len(rows) == len(records) and [r["id"] for r in rows] == [r.id for r in records]   # input order kept
    kept = [r for r in rows if r["status"] != "rejected"]
    assert len(kept) == 90 == summary.details["kept"]
    check_accounting(records, kept, [r for r in rows if r["status"] == "rejected"])


def test_stats_file_and_steering(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "final.jsonl"
    run_balance(path, out, BalanceConfig(reuse_topics=True), progress=False)
    stats = json.loads(Path(f"{out}.stats.json").read_text())
    assert stats["total"] == len(records)
    assert stats["rejected_by_stage"]["gate"] == sum(r.status == "rejected" for r in records)
    assert stats["thin_levels"] == ["high", "mid"]           # 8% and 22% supply against a 33% target
    assert "poetry" in stats["thin_topics"]                  # 5% of the corpus against a mean of 20%
    assert "cooking" not in stats["thin_topics"]
    cooking = stats["topics"]["cooking"]
    assert cooking["kept"] + sum(cooking["rejected_by_stage"].values()) == cooking["total"]
    steering = load_steering(Path(f"{out}.stats.json"))
    assert steering.thin_levels == ["high", "mid"] and "poetry" in steering.thin_topics
    assert steering.level_names == ["low", "mid", "high"]         # low to high: evolve reads the order
    examples = steering.examples_for("poetry")
    assert examples and all(e.startswith("poetry task") for e in examples)


def test_depth_fallback_when_no_score(tmp_path):
    recs = [Record(instruction=f"t {i}", topic="x", lineage=Lineage(round=i % 4), status="accepted") for i in range(40)]
    assert [level_of(r) for r in recs[:4]] == ["low", "mid", "high", "high"]
    path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(path, recs)
    run_balance(path, out, BalanceConfig(reuse_topics=True), progress=False)
    kept = read_jsonl(out)
    assert Counter(level_of(Record.model_validate(r)) for r in kept) == {"low": 10, "mid": 10, "high": 10}


def test_plan_and_waterfill_properties():
    assert waterfill(10, {"a": 2, "b": 8, "c": 8}) == {"a": 2, "b": 4, "c": 4}
    assert sum(waterfill(100, {"a": 3, "b": 4}).values()) == 7
    avail = {("t1", "low"): 100, ("t1", "mid"): 10, ("t2", "low"): 50, ("t2", "mid"): 30, ("t2", "high"): 5,
             ("t3", "high"): 20, ("t3", "low"): 5}
    plan = plan_selection(avail, {"low": 1 / 3, "mid": 1 / 3, "high": 1 / 3}, cap=40)
    by_level, by_topic = Counter(), Counter()
    for (t, lv), n in plan.items():
        assert n <= avail[(t, lv)]
        by_level[lv] += n
        by_topic[t] += n
    assert by_level["low"] == by_level["mid"] == by_level["high"] == 25
    assert max(by_topic.values()) <= 40


def test_bad_target_is_a_clear_error(tmp_path):
    with pytest.raises(DataforgeError, match="LEVEL=SHARE"):
        parse_target("low=0.5,extreme=0.5", ("low", "mid", "high"))
    with pytest.raises(DataforgeError, match="not a number"):
        parse_target("low=lots", ("low", "mid", "high"))
    assert parse_target("low=1,high=3", ("low", "mid", "high")) == {"low": 0.25, "mid": 0.0, "high": 0.75}
    bad = tmp_path / "stats.json"
    bad.write_text("{not json")
    with pytest.raises(DataforgeError, match="stats.json"):
        load_steering(bad)


def test_gate_side_files_count_in_stats_only(corpus, tmp_path):
    """The gate writes rejected/review records beside its output: balance counts them (stage by stage) in the
    stats, keeps them out of selection and out of its own files."""
    path, records = corpus
    accepted = [r for r in records if r.status != "rejected"]
    gate_rejected = [r for r in records if r.status == "rejected"]
    review = [Record(instruction=f"poetry review {i}", topic="poetry", complexity=8.0, status="review",
                     reasons=["gate:judge_uncertain"]) for i in range(7)]
    clean = tmp_path / "clean.jsonl"
    write_records(clean, accepted)
    write_records(Path(f"{clean}.rejected.jsonl"), gate_rejected)
    write_records(Path(f"{clean}.review.jsonl"), review)
    out = tmp_path / "final.jsonl"
    summary = run_balance(clean, out, BalanceConfig(reuse_topics=True), progress=False)
    assert summary.details["upstream_counted"] == len(gate_rejected) + len(review)
    kept, dropped = read_jsonl(out), read_jsonl(Path(f"{out}.rejected.jsonl"))
    check_accounting(accepted, kept, dropped)                     # outputs hold exactly the input's records
    stats = json.loads(Path(f"{out}.stats.json").read_text())
    assert stats["total"] == len(records) + len(review)
    assert stats["rejected_by_stage"] == {"balance": summary.details["dropped_by_balance"], "gate": len(gate_rejected),
                                          "review": len(review)}
    assert stats["topics"]["poetry"]["rejected_by_stage"]["review"] == 7


@settings(max_examples=150, deadline=None)
@given(
    cells=st.dictionaries(st.tuples(st.sampled_from("abcdef"), st.sampled_from(["low", "mid", "high", "unrated"])),
                          st.integers(0, 60), max_size=24),
    shares=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(1, 5)),
    cap=st.one_of(st.none(), st.integers(1, 80)),
    size=st.one_of(st.none(), st.integers(1, 200)),
)
def test_plan_respects_supply_cap_size_and_target(cells, shares, cap, size):
    target = {lv: s / sum(shares) for lv, s in zip(("low", "mid", "high"), shares)}
    plan = plan_selection(cells, target, cap, size)
    per_topic, per_level = Counter(), Counter()
    for cell, n in plan.items():
        assert 0 < n <= cells[cell]
        per_topic[cell[0]] += n
        per_level[cell[1]] += n
    if cap is not None:
        assert all(n <= cap for n in per_topic.values())
    rated = sum(n for lv, n in per_level.items() if lv != "unrated")
    if size is not None:
        assert sum(per_level.values()) <= size
    supplied = {lv for (_, lv), n in cells.items() if n and target.get(lv, 0) > 0}
    norm = sum(target[lv] for lv in supplied)
    for lv in supplied:  # exact quotas (largest remainder) on the levels that have candidates, renormalised
        assert abs(per_level[lv] - rated * target[lv] / norm) < 1.0 + 1e-9


def test_empty_gate_side_files_are_no_error(corpus, tmp_path):
    """A gate that set nothing aside leaves empty <in>.rejected/.review files: balance reads past them."""
    path, records = corpus
    Path(f"{path}.rejected.jsonl").write_text("")
    Path(f"{path}.review.jsonl").write_text("")
    out = tmp_path / "final.jsonl"
    summary = run_balance(path, out, BalanceConfig(reuse_topics=True, topic_cap_ratio=None), progress=False)
    assert summary.details["upstream_counted"] == 0
    check_accounting(records, read_jsonl(out), read_jsonl(Path(f"{out}.rejected.jsonl")))


def _one_level_missing(tmp_path) -> tuple[Path, list[Record]]:
    records = [r for r in skewed_corpus(300, seed=3) if level_of(r) != "high"]
    path = tmp_path / "nohigh.jsonl"
    write_records(path, records)
    return path, records


def test_an_empty_level_leaves_the_target_instead_of_emptying_the_output(tmp_path):
    path, records = _one_level_missing(tmp_path)
    out = tmp_path / "final.jsonl"
    summary = run_balance(path, out, BalanceConfig(reuse_topics=True, topic_cap_ratio=None), progress=False)
    kept = read_jsonl(out)
    check_accounting(records, kept, read_jsonl(Path(f"{out}.rejected.jsonl")))
    shares = level_shares(kept)
    assert shares.get("high", 0) == 0 and abs(shares["low"] - 0.5) <= 0.01 and abs(shares["mid"] - 0.5) <= 0.01, shares
    assert summary.details["kept"] == 2 * sum(1 for r in records if r.status != "rejected" and level_of(r) == "mid")


def test_cap_mode_keeps_thin_levels_whole_and_caps_the_rest(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "final.jsonl"
    run_balance(path, out, BalanceConfig(reuse_topics=True, topic_cap_ratio=None, level_mode="cap"), progress=False)
    kept = read_jsonl(out)
    check_accounting(records, kept, read_jsonl(Path(f"{out}.rejected.jsonl")))
    candidates = [r for r in records if r.status != "rejected"]
    by_level = Counter(level_of(r) for r in candidates)
    kept_levels = Counter(level_of(Record.model_validate(r)) for r in kept)
    share = len(candidates) / 3
    for lv, n in by_level.items():
        assert kept_levels[lv] == min(n, round(share)) or abs(kept_levels[lv] - min(n, share)) <= 1, (lv, n, kept_levels)
    assert kept_levels["high"] == by_level["high"]  # the thin level keeps everything it has
    assert len(kept) > sum(min(by_level.values()) for _ in range(3))  # more than exact mode would keep
