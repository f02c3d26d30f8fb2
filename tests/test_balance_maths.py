"""balance's arithmetic against hand-computed plans: water-filling, largest-remainder quotas, the exact and cap
modes with topic caps, sizes and unrated records; level schemes; ties broken by the seeded id hash; the summary's
counts; and the errors that refuse a bad configuration."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from dataforge.curate.balance import BalanceConfig, plan_selection, run_balance, tiebreak, waterfill
from dataforge.curate.plan import _quotas
from dataforge.errors import DataforgeError
from dataforge.io import read_records, write_records
from dataforge.records import Record

AVAIL = {("t1", "low"): 5, ("t1", "high"): 2, ("t2", "low"): 3, ("t2", "high"): 4}
HALF = {"low": 0.5, "mid": 0.0, "high": 0.5}


def test_waterfill_by_hand():
    assert waterfill(10, {"a": 2, "b": 8, "c": 8}) == {"a": 2, "b": 4, "c": 4}
    assert waterfill(7, {"b": 5, "a": 5}) == {"a": 4, "b": 3}          # equal limits: the first name gets the odd one
    assert waterfill(6, {"x": 2, "y": 4}) == {"x": 2, "y": 4}
    assert waterfill(2, {"x": 5, "y": 3}) == {"x": 1, "y": 1}
    assert waterfill(1, {"p": 0, "q": 2, "r": 3}) == {"p": 0, "q": 1, "r": 0}
    assert waterfill(0, {"a": 3}) == {"a": 0} and waterfill(5, {}) == {}
    assert waterfill(100, {"a": 3, "b": 4}) == {"a": 3, "b": 4}


def test_largest_remainder_quotas_by_hand():
    assert _quotas(7, {"low": 0.2, "mid": 0.5, "high": 0.3}) == {"low": 1, "mid": 4, "high": 2}  # 1.4 3.5 2.1
    assert _quotas(10, {"c": 1 / 3, "a": 1 / 3, "b": 1 / 3}) == {"a": 4, "b": 3, "c": 3}  # tie: first name
    assert _quotas(5, {"low": 0.5, "high": 0.5}) == {"low": 2, "high": 3}
    assert _quotas(0, {"a": 0.5, "b": 0.5}) == {"a": 0, "b": 0}
    assert _quotas(9, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 5, "b": 2, "c": 2}  # 4.5 2.25 2.25
    assert _quotas(8, {"a": 2.9 / 8, "b": 5.1 / 8}) == {"a": 3, "b": 5}  # the larger remainder, not the larger share


def test_exact_plan_by_hand():
    # reach: low 8, high 6 -> total min(8 / .5, 6 / .5) = 12, quotas 6 / 6; high (scarcest) first
    assert plan_selection(AVAIL, HALF, cap=None) == {("t1", "high"): 2, ("t2", "high"): 4, ("t2", "low"): 3,
                                                     ("t1", "low"): 3}


def test_exact_plan_shrinks_until_the_cap_allows_it():
    # cap 5: at 12 (6 / 6) high takes t1 2 + t2 4, leaving low 3 + 1 = 4 < 6; at 11 (high 6, low 5) low gets 4;
    # at 10 (5 / 5) high takes t1 2 + t2 3 and low t1 3 + t2 2: met, each topic at its cap of 5
    assert plan_selection(AVAIL, HALF, cap=5) == {("t1", "high"): 2, ("t2", "high"): 3, ("t1", "low"): 3,
                                                  ("t2", "low"): 2}


def test_exact_plan_finds_the_total_the_shrink_bound_skips():
    """Cap 2 on the only topic, size 3: at 3 (low 2, mid 1) mid finds no room, and the bound from what mid got
    (0) used to jump straight to an empty output; a total of 2 (low 1, mid 1) fits."""
    target = {"low": 4 / 9, "mid": 3 / 9, "high": 2 / 9}
    assert plan_selection({("c", "low"): 3, ("c", "mid"): 6}, target, cap=2, size=3) == {("c", "low"): 1,
                                                                                        ("c", "mid"): 1}


def test_exact_plan_serves_the_scarcest_level_first():
    """low (80% of the target) exists only in t1, whose cap it needs whole: served first it keeps 8 + 2 high
    from t2; served after high (which would take one of t1's places) only 6 + 2 fit."""
    avail = {("t1", "low"): 8, ("t1", "high"): 8, ("t2", "high"): 8}
    assert plan_selection(avail, {"low": 0.8, "high": 0.2}, cap=8) == {("t1", "low"): 8, ("t2", "high"): 2}


def test_exact_plan_with_a_size():
    # size 5: quotas 2.5 / 2.5 -> high 3 (remainder tie goes to 'high' < 'low'), low 2
    assert plan_selection(AVAIL, HALF, cap=None, size=5) == {("t1", "high"): 2, ("t2", "high"): 1,
                                                             ("t2", "low"): 1, ("t1", "low"): 1}


def test_cap_mode_by_hand():
    # 14 rated candidates, quotas 7 / 7; low: t2 3, t1 4; high: everything (2 + 4 = 6 < 7)
    assert plan_selection(AVAIL, HALF, cap=None, mode="cap") == {("t1", "low"): 4, ("t2", "low"): 3,
                                                                 ("t1", "high"): 2, ("t2", "high"): 4}
    # with a size of 6: quotas 3 / 3; low: t2 (smaller limit) ceil(3 / 2) = 2, t1 1; high: t1 2, t2 1
    assert plan_selection(AVAIL, HALF, cap=None, size=6, mode="cap") == {("t1", "low"): 1, ("t2", "low"): 2,
                                                                         ("t1", "high"): 2, ("t2", "high"): 1}
    # a cap of 4 per topic: low takes t1 4 + t2 3, so high only fits t2's last place
    plan = plan_selection(AVAIL, HALF, cap=4, mode="cap")
    assert plan == {("t1", "low"): 4, ("t2", "low"): 3, ("t2", "high"): 1}


def test_cap_mode_counts_every_level_against_the_cap():
    # one topic, cap 5, quotas 3 / 3 / 3: low 3, mid 2 (cap reached), high nothing
    avail = {("t", "low"): 3, ("t", "mid"): 3, ("t", "high"): 3}
    third = {"low": 1 / 3, "mid": 1 / 3, "high": 1 / 3}
    assert plan_selection(avail, third, cap=5, mode="cap") == {("t", "low"): 3, ("t", "mid"): 2}
    # a topic without some level: no place is invented for it
    # 5 rated, quotas 2.5 / 2.5 -> high 3 (tie to the first name), low 2
    assert plan_selection({("a", "low"): 3, ("b", "high"): 2}, HALF, cap=None, mode="cap") == {("a", "low"): 2,
                                                                                          ("b", "high"): 2}


def test_unrated_records_fill_what_the_cap_and_size_leave():
    avail = {**AVAIL, ("t1", "unrated"): 3, ("t3", "unrated"): 2}
    plan = plan_selection(avail, HALF, cap=None)
    assert plan == {("t1", "high"): 2, ("t2", "high"): 4, ("t2", "low"): 3, ("t1", "low"): 3,
                    ("t1", "unrated"): 3, ("t3", "unrated"): 2}
    plan = plan_selection(avail, HALF, cap=None, size=13)  # 12 rated, one place left
    assert plan[("t3", "unrated")] == 1 and ("t1", "unrated") not in plan and sum(plan.values()) == 13
    plan = plan_selection(avail, HALF, cap=6)
    assert sum(n for (t, _), n in plan.items() if t == "t1") <= 6 and plan[("t3", "unrated")] == 2
    only_unrated = plan_selection({("a", "unrated"): 4, ("b", "unrated"): 1}, HALF, cap=2, size=None)
    assert only_unrated == {("a", "unrated"): 2, ("b", "unrated"): 1}


def test_levels_without_candidates_leave_the_target():
    plan = plan_selection({("t", "low"): 4, ("t", "mid"): 2}, {"low": 0.25, "mid": 0.25, "high": 0.5}, cap=None)
    assert plan == {("t", "mid"): 2, ("t", "low"): 2}  # high has none: low / mid renormalised to 1/2 each
    assert plan_selection({("t", "low"): 4}, {"low": 0.0, "high": 1.0}, cap=None) == {}  # no rated target left
    assert plan_selection({}, HALF, cap=None) == {}


# ---------------------------------------------------------------- level schemes and paths


def test_level_scheme_defaults_and_errors():
    assert BalanceConfig().scheme().score_edges == (4.0, 7.0)
    two = BalanceConfig(level_names="easy, hard").scheme()
    assert two.names == ("easy", "hard") and two.score_edges == (5.5,) and two.depth_edges == (1.0,)
    four = BalanceConfig(level_names="a,b,c,d").scheme()
    assert four.score_edges == pytest.approx((3.25, 5.5, 7.75)) and four.depth_edges == (1.0, 2.0, 3.0)
    one = BalanceConfig(level_names="all").scheme()
    assert one.names == ("all",) and one.score_edges == ()
    assert BalanceConfig(level_names="x,y,z", level_edges="2,3", depth_edges="0.5,5").scheme().score_edges == (2, 3)
    for bad in ("", " , ", "a,a", "low,unrated"):
        with pytest.raises(DataforgeError, match="--level-names"):
            BalanceConfig(level_names=bad).scheme()


def test_level_targets_and_edges_parsed_and_refused_by_hand():
    """--levels-target: empty, blank or 'uniform' is uniform; empty items are skipped; a share may be 0; each
    refusal names the option, the text and what is expected. Edges and schemes likewise."""
    from dataforge.curate.levels import LevelScheme, parse_edges, parse_target

    names = ("low", "mid", "high")
    for text in (None, "", "   ", "uniform", " uniform "):
        assert parse_target(text, names) == {"low": 1 / 3, "mid": 1 / 3, "high": 1 / 3}
    assert parse_target("low=1,,high=1, ", names) == {"low": 0.5, "mid": 0.0, "high": 0.5}
    assert parse_target("low=0,high=2", names) == {"low": 0.0, "mid": 0.0, "high": 1.0}
    refused = {
        "low=1=2": "--levels-target 'low=1=2': '1=2' is not a number",
        "top=1": "--levels-target 'top=1': each item must be LEVEL=SHARE with LEVEL in low, mid, high",
        "low=-1,high=2": "--levels-target 'low=-1,high=2': shares must be >= 0",
        "low=0,high=0": "--levels-target 'low=0,high=0': shares must add up to more than 0",
    }
    for text, message in refused.items():
        with pytest.raises(DataforgeError) as err:
            parse_target(text, names)
        assert str(err.value) == message
    assert parse_edges("2, 5,", (4.0, 7.0)) == (2.0, 5.0) and parse_edges(None, (4.0, 7.0)) == (4.0, 7.0)
    with pytest.raises(DataforgeError) as err:
        parse_edges("4,seven", (4.0, 7.0))
    assert str(err.value) == "level edges '4,seven': expected comma-separated numbers, e.g. 4,7"
    schemes = {
        (("a", "b"), (1.0, 2.0), (1.0,)): "score level edges [1.0, 2.0] need exactly 1 values for levels ['a', 'b']",
        (("a", "b"), (1.0,), ()): "depth level edges [] need exactly 1 values for levels ['a', 'b']",
        (("a", "b", "c"), (7.0, 4.0), (1.0, 2.0)): "score level edges [7.0, 4.0] must be increasing",
        (("a", "b", "c"), (4.0, 7.0), (2.0, 1.0)): "depth level edges [2.0, 1.0] must be increasing",
    }
    for (level_names, score, depth), message in schemes.items():
        with pytest.raises(DataforgeError) as err:
            LevelScheme(level_names, score, depth)
        assert str(err.value) == message


# ---------------------------------------------------------------- running the stage


def _rec(i: int, topic: str = "t", complexity: float = 2.0, **kw) -> Record:
    return Record(instruction=f"{topic} task {i}", output=f"answer {i}", topic=topic, complexity=complexity, **kw)


def test_equal_quality_ties_go_by_the_seeded_id_hash(tmp_path):
    recs = [_rec(i, scores={"coherence": 0.5}) for i in range(6)]
    src = tmp_path / "in.jsonl"
    write_records(src, recs)
    for seed in (0, 1):
        out = tmp_path / f"out{seed}.jsonl"
        run_balance(src, out, BalanceConfig(reuse_topics=True, size=2, topic_cap_ratio=None, seed=seed),
                    progress=False)
        want = sorted(recs, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest())[:2]
        assert sorted(r.id for r in read_records(out)) == sorted(r.id for r in want)
    assert tiebreak(3, "abc") == hashlib.sha256(b"3:abc").digest()


def test_summary_counts_and_the_default_topic_cap(tmp_path):
    recs = ([_rec(i, "a") for i in range(6)] + [_rec(i, "b", complexity=8.0) for i in range(2)]
            + [_rec(9, "a", status="rejected", reasons=["gate:coherence"])])
    recs.append(recs[0])  # the same record twice
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, recs)
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, levels_target="low=1,high=1"), progress=False)
    # 9 candidates over 2 topics: cap = ceil(2.0 * 9 / 2) = 9; target 1/2 low, 1/2 high: 2 + 2
    d = s.details
    assert d["topic_cap"] == math.ceil(2.0 * 9 / 2) == 9
    assert s.records_in == 10 and d["duplicate_ids"] == 1 and d["candidates"] == 9 and d["arrived_rejected"] == 1
    assert d["kept"] == 4 and d["dropped_by_balance"] == 5 and d["kept_by_level"] == {"low": 2, "mid": 0, "high": 2}
    assert d["level_target"] == {"low": 0.5, "mid": 0.0, "high": 0.5}
    assert d["by_reason"] == {"balance": 5, "gate": 1} and d["upstream_counted"] == 0
    assert s.out == {"pending": 4, "rejected": 6}
    assert s.files["rejected"] == str(out) + ".rejected.jsonl" and s.files["stats"] == str(out) + ".stats.json"
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, topic_cap_ratio=0.5), progress=False)
    assert s.details["topic_cap"] == math.ceil(0.5 * 9 / 2) == 3
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, topic_cap=1, keep_dropped=True), progress=False)
    assert s.details["topic_cap"] == 1 and "rejected" not in s.files and len(list(read_records(out))) == 10


def test_unrated_records_show_in_the_summary(tmp_path):
    recs = [Record(instruction=f"u {i}", topic="t") for i in range(3)] + [_rec(0)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, recs)
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, topic_cap_ratio=None), progress=False)
    assert s.details["kept_by_level"] == {"low": 1, "mid": 0, "high": 0, "unrated": 3} and s.details["kept"] == 4


def test_bad_configurations_are_refused(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, [_rec(0)])
    with pytest.raises(DataforgeError, match="--keep-dropped needs --to record or parquet: alpaca"):
        run_balance(src, tmp_path / "o.json", BalanceConfig(keep_dropped=True, out_format="alpaca"), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{not json\n")
    with pytest.raises(DataforgeError, match=r"empty\.jsonl: no usable records \(1 bad lines: "):
        run_balance(empty, tmp_path / "o.jsonl", BalanceConfig(reuse_topics=True, in_format="record"), progress=False)
    with pytest.raises(DataforgeError, match=r"missing\.jsonl: no such file \(--upstream\)"):
        run_balance(src, tmp_path / "o.jsonl", BalanceConfig(reuse_topics=True, upstream=[str(tmp_path / "missing.jsonl")]),
                    progress=False)


def test_side_files_are_read_only_when_asked(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(0), _rec(1)])
    write_records(tmp_path / "in.jsonl.rejected.jsonl", [_rec(5, status="rejected", reasons=["gate:x"])])
    extra = tmp_path / "evolve.rejected.jsonl"
    write_records(extra, [_rec(6, status="rejected", reasons=["evolve:y"]), _rec(7, status="rejected",
                                                                             reasons=["evolve:y"])])
    assert run_balance(src, out, BalanceConfig(reuse_topics=True), progress=False).details["upstream_counted"] == 1
    assert run_balance(src, out, BalanceConfig(reuse_topics=True, auto_upstream=False),
                       progress=False).details["upstream_counted"] == 0
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, upstream=[str(extra)], auto_upstream=False),
                    progress=False)
    assert s.details["upstream_counted"] == 2 and s.records_in == 2


def test_the_whole_summary_and_stats_of_a_small_run(tmp_path):
    """Every summary field and the stats file's balance section, by hand: topic a has 4 low, 1 mid, 1 high;
    b 1 high; one record arrives rejected with no reason, one with a reason of several colons; target
    low 1 / high 1 (mid 0); no cap. High reach 2 -> total 4: low 2 (best two of a), high 2."""
    import json

    recs = [_rec(i, "a", 2.0, scores={"coherence": 0.9 - i / 10}) for i in range(4)]
    recs += [_rec(10, "a", 5.0), _rec(11, "a", 8.0), _rec(12, "b", 9.0)]
    recs += [_rec(20, "b", 2.0, status="rejected"), _rec(21, "b", 2.0, status="rejected", reasons=["gate:x:0.1"])]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, recs)
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, levels_target="low=1,high=1", topic_cap_ratio=None),
                    progress=False)
    assert s.stage == "balance" and s.input == str(src) and s.output == str(out) and s.records_in == 9
    assert s.out == {"pending": 4, "rejected": 5} and s.bad_lines == 0 and s.tokens.total == 0
    assert s.files == {"output": str(out), "rejected": f"{out}.rejected.jsonl", "stats": f"{out}.stats.json"}
    assert s.details == {
        "duplicate_ids": 0,
        "candidates": 7, "kept": 4, "dropped_by_balance": 3, "arrived_rejected": 2, "upstream_counted": 0,
        "by_reason": {"balance": 3, "unknown": 1, "gate": 1},
        "topics": 2, "topic_cap": None,
        "kept_by_level": {"low": 2, "mid": 0, "high": 2},
        "level_target": {"low": 0.5, "mid": 0.0, "high": 0.5},
        "thin_topics": s.details["thin_topics"], "thin_levels": s.details["thin_levels"],
        "phase_s": s.details["phase_s"],
    }
    assert sorted(s.details["phase_s"]) == ["choose", "topics", "write"]  # wall seconds per phase
    assert {r.id for r in read_records(out)} == {recs[0].id, recs[1].id, recs[5].id, recs[6].id}
    stats = json.loads((tmp_path / "out.jsonl.stats.json").read_text())
    assert s.details["thin_topics"] == stats["thin_topics"] and s.details["thin_levels"] == stats["thin_levels"]
    assert stats["balance"] == {
        "topic_cap": None, "size": None, "levels": ["low", "mid", "high"],
        "plan": [{"topic": "a", "level": "high", "available": 1, "kept": 1},
                 {"topic": "a", "level": "low", "available": 4, "kept": 2},
                 {"topic": "a", "level": "mid", "available": 1, "kept": 0},
                 {"topic": "b", "level": "high", "available": 1, "kept": 1}],
        "clustering": {"method": "reused", "k": 2},
    }
    assert stats["level_target"] == {"low": 0.5, "mid": 0.0, "high": 0.5}
    assert stats["topics"]["a"]["label"] == "a" and stats["topics"]["a"]["name"] is None
    assert stats["levels"]["low"]["target_share"] == 0.5


def test_uniform_target_is_rounded_to_four_places(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(0, complexity=2.0), _rec(1, complexity=5.0), _rec(2, complexity=8.0)])
    s = run_balance(src, out, BalanceConfig(reuse_topics=True), progress=False)
    assert s.details["level_target"] == {"low": 0.3333, "mid": 0.3333, "high": 0.3333} and s.details["kept"] == 3


def test_level_names_and_edges_reach_the_records(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(i, complexity=c) for i, c in enumerate((2.0, 3.0, 6.0, 9.0))])
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, level_names="easy,hard", level_edges="5"),
                    progress=False)
    assert s.details["kept_by_level"] == {"easy": 2, "hard": 2}
    depth = [Record(instruction=f"d {i}", topic="t", lineage={"round": r}) for i, r in enumerate((0, 1, 3, 6))]
    write_records(src, depth)
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, depth_edges="0.5,5"), progress=False)
    assert s.details["kept_by_level"] == {"low": 1, "mid": 1, "high": 1}  # rounds 0 | 1, 3 | 6: mid keeps 1 of 2
    assert BalanceConfig(depth_edges="0.5,5").scheme().depth_edges == (0.5, 5.0)


def test_bad_lines_go_to_the_rejects_file_or_stop_a_strict_run(tmp_path):
    import json

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(0), _rec(1)])
    with open(src, "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, in_format="record"), progress=False)
    assert s.bad_lines == 1 and s.records_in == 2
    (bad,) = [json.loads(line) for line in Path(s.files["bad_lines"]).read_text().splitlines()]
    assert bad["line"] == 3 and bad["raw"].startswith("{not json")
    with pytest.raises(DataforgeError, match=r"in\.jsonl:3: "):
        run_balance(src, out, BalanceConfig(reuse_topics=True, in_format="record", strict=True), progress=False)


def test_custom_side_file_paths_and_output_format(tmp_path):
    import json

    src, out = tmp_path / "in.jsonl", tmp_path / "out.json"
    write_records(src, [_rec(0, complexity=2.0), _rec(1, complexity=2.0), _rec(2, complexity=8.0)])
    rej, st = tmp_path / "dropped.jsonl", tmp_path / "facts.json"
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, out_format="alpaca", rejected_path=str(rej),
                                            stats_path=str(st), levels_target="low=1,high=1"), progress=False)
    assert s.files["rejected"] == str(rej) and s.files["stats"] == str(st) and st.is_file()
    assert not (tmp_path / "out.json.rejected.jsonl").exists() and not (tmp_path / "out.json.stats.json").exists()
    assert [json.loads(line)["status"] for line in rej.read_text().splitlines()] == ["rejected"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"instruction", "input", "output"}  # alpaca rows


def test_topic_cap_is_at_least_one(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(i, t) for i, t in enumerate("aab")])
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, topic_cap_ratio=0.1), progress=False)
    assert s.details["topic_cap"] == 1 and s.details["kept"] == 2  # ceil(0.1 x 3 / 2) = 1


def test_progress_bars_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATAFORGE_PROGRESS", "1")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [_rec(i) for i in range(7)])
    run_balance(src, out, BalanceConfig(reuse_topics=True), progress=True)
    err = capsys.readouterr().err
    assert "write" in err and "7/7" in err and "rec/s" in err
    run_balance(src, out, BalanceConfig(reuse_topics=True), progress=False)
    assert capsys.readouterr().err == ""
    run_balance(src, out, BalanceConfig(reuse_topics=True))  # bars are on by default
    assert "write" in capsys.readouterr().err
