"""The score table (`dataforge.quality.scores`) names exactly what the gate writes and agrees with the gate's
bounds; balance ranks by it, so a worse record no longer outranks a better one because of a 1-10 complexity
rating or a high contradiction probability."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import EXAMPLES
from dataforge.curate.balance import BalanceConfig, quality_score, run_balance
from dataforge.io import read_records, write_records
from dataforge.quality.rules import load_rules
from dataforge.quality.scores import NO_RANK, RANKED, SCORES, goodness, quality_rank
from dataforge.records import Record

# Scores exactly as the gate wrote them (dataforge filter on instruct_corpus_shared.jsonl records, with a
# loopback judge answering yes/no and {"score": N}): the judge adds alignment, contradiction, complexity_judge.
GOOD = {"structure": 1.0, "refusal": 1.0, "truncation": 1.0, "format": 1.0, "complexity": 4.0, "coherence": 0.807,
        "reference": 0.1372, "alignment": 1.0, "contradiction": 0.0, "complexity_judge": 3.0}
# The same shape for a worse answer that still passes the gate: weaker coherence and alignment, a contradiction
# probability just under the gate's max (0.5), and a task the judge rates hard (9/10).
WORSE = {"structure": 1.0, "refusal": 1.0, "truncation": 1.0, "format": 1.0, "complexity": 7.5, "coherence": 0.4107,
         "reference": 0.3302, "alignment": 0.62, "contradiction": 0.45, "complexity_judge": 9.0}
# Without a judge the gate writes the embedding alignment ranks instead (swapped-answer record of the same run).
SWAPPED = {"structure": 1.0, "refusal": 1.0, "truncation": 1.0, "format": 1.0, "complexity": 4.205,
           "coherence": -0.0477, "reference": 0.1019, "alignment_emb": 0.0833, "alignment_local": 0.0938}


def _old_mean(scores: dict[str, float]) -> float:
    """balance's previous ranking: the mean of every score except `complexity`."""
    vals = [v for k, v in scores.items() if k != "complexity"]
    return sum(vals) / len(vals)


def test_ranked_scores_share_one_scale_and_direction():
    assert set(RANKED) == {"coherence", "alignment", "alignment_emb", "alignment_local", "format", "truncation",
                           "structure", "refusal", "contradiction", "reference_answer", "arithmetic", "execution",
                           "consistency"}
    assert "complexity" not in RANKED and "complexity_judge" not in RANKED and "reference" not in RANKED
    assert goodness("contradiction", 0.2) == pytest.approx(0.8) and goodness("coherence", 0.2) == 0.2
    assert goodness("coherence", -0.3) == 0.0 and goodness("contradiction", 1.7) == 0.0  # clipped to 0-1
    assert goodness("alignment", 1.4) == 1.0


def test_quality_rank_by_hand():
    # (0.807 + 1 + 1 + 1 + 1 + 1 + (1 - 0.0)) / 7 : complexity, complexity_judge and reference left out
    assert quality_rank(GOOD) == pytest.approx((0.807 + 6.0) / 7)
    assert quality_rank(WORSE) == pytest.approx((0.4107 + 0.62 + 4.0 + (1 - 0.45)) / 7)
    assert quality_rank(SWAPPED) == pytest.approx((0.0 + 0.0833 + 0.0938 + 4.0) / 7)
    assert quality_rank({"complexity": 9.0, "reference": 0.9}) == NO_RANK < 0
    assert quality_rank({}) == NO_RANK
    assert quality_rank({"coherence": None, "format": 0.5}) == 0.5  # a missing value is skipped, not zero


def test_a_worse_record_no_longer_outranks_a_better_one():
    assert _old_mean(WORSE) > _old_mean(GOOD)  # the bug: complexity_judge 9 and contradiction 0.45 "helped"
    assert quality_score(Record(instruction="a", scores=WORSE)) < quality_score(Record(instruction="b", scores=GOOD))
    assert quality_score(Record(instruction="c", scores=SWAPPED)) < quality_score(Record(instruction="d", scores=GOOD))
    # a record without any quality score ranks below every scored one, even the worst
    worst = {"coherence": 0.0, "contradiction": 1.0}
    assert quality_score(Record(instruction="e")) < quality_score(Record(instruction="f", scores=worst)) == 0.0


def test_balance_keeps_the_better_record_of_a_cell(tmp_path):
    """Two candidates in one (topic, level) cell, room for one: the better answer is kept, whatever the
    judge thought of the task's complexity."""
    good = Record(instruction="Explain why leaves change colour in autumn.", output="Chlorophyll breaks down.",
                  topic="plants", complexity=5.0, status="accepted", scores=GOOD)
    worse = Record(instruction="Explain why leaves fall in autumn.", output="They are tired.",
                   topic="plants", complexity=5.0, status="accepted", scores=WORSE)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [worse, good])
    summary = run_balance(src, out, BalanceConfig(reuse_topics=True, size=1, topic_cap_ratio=None), progress=False)
    assert summary.details["kept"] == 1
    assert [r.id for r in read_records(out)] == [good.id]
    (dropped,) = read_records(tmp_path / "out.jsonl.rejected.jsonl")
    assert dropped.id == worse.id and dropped.reasons[-1] == "balance:plants/mid"


def test_the_table_names_exactly_the_scores_the_gate_writes():
    """Score a few records with the real checks, once with a judge and self-consistency (loopback server) and
    once without: every name written is in the table, and every name in the table is written by one of the two.
    A worked sum with a GSM8K-style answer and a Python block bring the correctness signals in."""
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.quality.checks import Checker
    from dataforge.quality.consistency import SelfConsistency
    from dataforge.quality.embed import get_embedder
    from dataforge.quality.judges import Judge
    from dataforge.testing.loopback import LoopbackServer, last_user_message

    seeds = list(read_records(EXAMPLES / "seeds.jsonl"))
    gsm = Record(instruction="Natalia sold 48 clips in April and half as many in May. How many in all?",
                 output="In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 72")
    code = Record(instruction="Write Python that prints the sum of 0 to 4.",
                  output="Here it is:\n```python\nprint(sum(range(5)))\n```\nIt prints 10.")
    rules = load_rules()
    emb = get_embedder()
    records = [*seeds[:3], gsm, code]
    written: set[str] = set()
    checker = Checker(rules, emb, reference=seeds[3:6], pool_prompts=[r.prompt_text for r in seeds])
    for sc in asyncio.run(checker.score(records)):
        written |= set(sc.scores)

    def judge(body):
        text = last_user_message(body)
        if "Rate how complex" in text:
            return json.dumps({"score": 6})
        if "carry out" in text or "contradict" in text:
            return "yes" if "carry out" in text else "no"
        return ["#### 72"] * int(body.get("n") or 1)  # the sampled answers of self-consistency

    with LoopbackServer(judge) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True))
        judged = Checker(rules, emb, judge=Judge(llm), reference=seeds[3:6], consistency=SelfConsistency(llm))
        scored = asyncio.run(judged.score(records))
        asyncio.run(llm.aclose())
    for sc in scored:
        written |= set(sc.scores)
    assert scored[3].scores["consistency"] == 1.0 and scored[3].scores["arithmetic"] == 1.0
    assert scored[3].scores["reference_answer"] == 1.0 and scored[4].scores["execution"] == 1.0
    assert written == set(SCORES)


def test_the_gate_bounds_agree_with_the_table():
    """A check the gate bounds from below must be one where higher is better, one bounded from above one where
    lower is better (or not a quality score, like complexity); every configured check is in the table."""
    rules = load_rules()
    assert set(rules.checks) <= set(SCORES)
    for name, rule in rules.checks.items():
        better = SCORES[name].better
        if rule.min is not None:
            assert better in ("higher", None), name
            assert SCORES[name].low <= rule.min <= SCORES[name].high, name
        if rule.max is not None:
            assert better in ("lower", None), name
            assert SCORES[name].low <= rule.max <= SCORES[name].high, name
