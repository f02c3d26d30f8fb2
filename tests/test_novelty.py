"""The novelty filter equals rouge-score exactly: same tokens, same F-measure, same sequential keep/drop
decisions (including pairs sitting exactly on the threshold), on random text and on real instructions."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenize

from conftest import EXAMPLES, needs_shared
from dataforge.generate import novelty
from dataforge.generate.novelty import NoveltyIndex, novel_mask, rouge_l, rouge_tokens

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

# a small vocabulary so random sentences overlap a lot; case, punctuation, digits and non-ASCII included
_WORDS = ["the", "The", "cat", "CAT", "sat", "on", "a", "mat", "dog", "ran", "fast", "x1", "2024", "naïve",
          "café", "don't", "e-mail", "Über", "ﬁle", "K", "İstanbul", "...", "--", "write", "list", "poem"]
sentences = st.lists(st.sampled_from(_WORDS), min_size=0, max_size=14).map(" ".join)
free_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def reference_mask(texts: list[str], pool: list[str] = (), threshold: float = 0.7) -> list[bool]:
    """Self-Instruct's loop with rouge-score, as the original runs it."""
    pool = list(pool)
    out = []
    for t in texts:
        scores = [SCORER.score(t, p)["rougeL"].fmeasure for p in pool]
        keep = not scores or max(scores) <= threshold
        out.append(keep)
        if keep:
            pool.append(t)
    return out


@settings(max_examples=200, deadline=None)
@given(st.one_of(sentences, free_text), st.one_of(sentences, free_text))
def test_tokens_and_fmeasure_equal_rouge_score(a, b):
    assert rouge_tokens(a) == tokenize.tokenize(a, None)
    assert rouge_l(a, b) == SCORER.score(a, b)["rougeL"].fmeasure


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sentences, min_size=1, max_size=25), st.sampled_from([0.7, 0.7, 0.5, 0.3, 0.9, 1.0, 0.0]))
def test_sequential_decisions_equal_rouge_score(texts, threshold):
    assert novel_mask(texts, threshold=threshold) == reference_mask(texts, threshold=threshold)


def test_pairs_exactly_on_the_threshold():
    """L common tokens plus padding: every (m, n, L) near F = 0.7, where float rounding decides."""
    checked = 0
    for m in range(1, 26):
        for n in range(1, 26):
            for lcs in range(0, min(m, n) + 1):
                if abs(2 * lcs / (m + n) - 0.7) > 0.06:
                    continue
                common = [f"c{i}" for i in range(lcs)]
                a = " ".join(common + [f"a{i}" for i in range(m - lcs)])
                b = " ".join(common + [f"b{i}" for i in range(n - lcs)])
                expected = SCORER.score(a, b)["rougeL"].fmeasure
                assert rouge_l(a, b) == expected
                assert NoveltyIndex([b]).check(a).kept == (not expected > 0.7), (m, n, lcs)
                checked += 1
    assert checked > 200


def test_result_fields_and_check_does_not_add():
    idx = NoveltyIndex(["Give three tips for staying healthy.", "Translate the sentence into French."])
    res = idx.check("give three TIPS for staying healthy")
    assert res.kept is False and res.most_similar == "Give three tips for staying healthy." and res.max_score == 1.0
    assert len(idx) == 2
    kept = idx.add_if_novel("Name the largest ocean on Earth.")
    assert kept.kept and kept.max_score <= 0.7 and len(idx) == 3
    assert idx.add_if_novel("").kept and idx.add_if_novel("!!!").kept  # no tokens: rouge scores 0
    with pytest.raises(ValueError):
        NoveltyIndex(threshold=1.5)


def test_dropped_max_score_is_the_exact_maximum():
    rng = random.Random(3)
    pool = [" ".join(rng.choice(_WORDS[:12]) for _ in range(rng.randint(3, 9))) for _ in range(60)]
    idx = NoveltyIndex(pool)
    for _ in range(200):
        cand = " ".join(rng.choice(_WORDS[:12]) for _ in range(rng.randint(3, 9)))
        scores = [SCORER.score(cand, p)["rougeL"].fmeasure for p in pool]
        res = idx.check(cand)
        assert res.kept == (max(scores) <= 0.7)
        if not res.kept:
            assert res.max_score == max(scores)


def _variants(text: str, rng: random.Random) -> list[str]:
    words = text.split()
    out = [text]
    if len(words) > 3:
        i = rng.randrange(len(words))
        out.append(" ".join(words[:i] + words[i + 1:]))  # one word dropped
        j = rng.randrange(len(words) - 1)
        w = words[:]
        w[j], w[j + 1] = w[j + 1], w[j]
        out.append(" ".join(w))  # two words swapped
    out.append(text + " Explain your answer briefly.")
    return out


def test_sequential_equality_on_repo_seed_variants():
    rng = random.Random(0)
    seeds = [json.loads(line)["instruction"] for line in (EXAMPLES / "seeds.jsonl").read_text().splitlines()]
    texts = [v for s in seeds for v in _variants(s, rng)]
    rng.shuffle(texts)
    got = novel_mask(texts, pool=seeds[:5])
    assert got == reference_mask(texts, pool=seeds[:5])
    assert 0 < sum(got) < len(got)  # both decisions occur


def test_int_list_fallback_is_exact(monkeypatch):
    """More distinct tokens than Unicode code points switches LCS to int lists; force it with a tiny limit."""
    monkeypatch.setattr(novelty, "_MAX_CHAR", 8)
    rng = random.Random(5)
    texts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 10))) for _ in range(80)]
    idx = NoveltyIndex()
    got = [idx.add_if_novel(t).kept for t in texts]
    assert idx._as_chars is False
    assert got == reference_mask(texts)


@needs_shared
def test_sequential_equality_on_real_instructions(shared_data):
    lines = (shared_data / "instruct_corpus_shared.jsonl").read_text(encoding="utf-8").splitlines()
    # 200 real instructions of at most 25 tokens (rouge-score's Python LCS is slow on long ones), spread
    # over the corpus; > 128 texts so the index re-ranks its tokens (rebuild) during the run
    texts = [t for t in (json.loads(line)["instruction"] for line in lines[::20]) if len(rouge_tokens(t)) <= 25][:200]
    assert len(texts) == 200
    got = novel_mask(texts)
    assert got == reference_mask(texts)
    assert 0 < sum(got) < len(got)


def test_pair_where_rapidfuzz_score_cutoff_misreports(tmp_path):
    """A real pair (200 vs 133 tokens, LCS 117, F = 0.7027) that an LCS call with score_cutoff=117 scored 0:
    the filter must still drop it, exactly as rouge-score does."""
    from conftest import TEST_DATA

    pair = json.loads((TEST_DATA / "novelty_lcs_cutoff_pair.json").read_text())
    a = " ".join(f"w{i}" for i in pair["a"])
    b = " ".join(f"w{i}" for i in pair["b"])
    expected = SCORER.score(a, b)["rougeL"].fmeasure
    assert expected > 0.7
    assert rouge_l(a, b) == expected
    res = NoveltyIndex([b]).check(a)
    assert not res.kept and res.max_score == expected


def test_threshold_is_inclusive_and_validated():
    """F exactly on the threshold is kept (Self-Instruct drops only F > t); the result names the closest text."""
    from dataforge.generate.novelty import NoveltyResult

    idx = NoveltyIndex(["a b c d"], threshold=0.5)
    assert rouge_l("a b x y", "a b c d") == 0.5
    assert idx.check("a b x y") == NoveltyResult(True, 0.5, "a b c d")
    assert idx.check("a b c x") == NoveltyResult(False, 0.75, "a b c d")
    assert NoveltyIndex(["a b"], threshold=1.0).check("A, b!").kept  # F = 1.0 is not above 1.0
    zero = NoveltyIndex(["a b c"], threshold=0.0)
    assert not zero.check("c z z z z z z").kept and zero.check("x y z").kept  # any shared token vs none
    for bad in (-0.001, 1.001):
        with pytest.raises(ValueError, match=rf"ROUGE-L threshold must be within \[0, 1\], got {bad}"):
            NoveltyIndex(threshold=bad)


def test_default_threshold_is_self_instructs_0_7():
    assert novelty.DEFAULT_THRESHOLD == 0.7 and NoveltyIndex().threshold == 0.7
    pool = ["the cat sat on the mat"]
    assert rouge_l("the cat sat on a mat", pool[0]) == pytest.approx(0.8333, abs=1e-4)
    assert rouge_l("the cat sat on a red mat today", pool[0]) == pytest.approx(2 * 5 / 14)  # 0.714: just above
    assert rouge_l("the cat sat on a red mat today again", pool[0]) == pytest.approx(2 * 5 / 15)  # 0.667: below
    assert novel_mask(["the cat sat on a mat", "the cat sat on a red mat today",
                       "the cat sat on a red mat today again"], pool) == [False, False, True]


def test_pool_operations_and_work_counters():
    idx = NoveltyIndex(["the cat sat on the mat", "a dog ran fast", "the cat sat"])
    res = idx.check("the cat sat on a mat")
    assert res == (False, 0.8333333333333334, "the cat sat on the mat") and len(idx) == 3
    # only the 6-token text can reach F > 0.7 against 6 tokens ('the cat sat' scores 2*3/9 = 0.67 at most)
    assert (idx.stats.checks, idx.stats.candidate_pairs, idx.stats.lcs_computed) == (1, 1, 1)
    kept = idx.add_if_novel("completely new words here")
    assert kept == (True, 0.0, None) and len(idx) == 4
    assert (idx.stats.checks, idx.stats.candidate_pairs, idx.stats.lcs_computed) == (2, 1, 1)
    assert not idx.add_if_novel("the cat sat on the mat").kept and len(idx) == 4
    idx.add("a dog ran fast")  # `add` keeps even a duplicate (human seeds)
    assert idx.texts == ["the cat sat on the mat", "a dog ran fast", "the cat sat", "completely new words here",
                         "a dog ran fast"]


def test_fmeasure_edges():
    from dataforge.generate.novelty import fmeasure_from_lcs

    assert fmeasure_from_lcs(0, 0, 5) == 0.0 and fmeasure_from_lcs(0, 5, 0) == 0.0 and fmeasure_from_lcs(0, 0, 0) == 0.0
    assert fmeasure_from_lcs(0, 3, 4) == 0.0
    assert fmeasure_from_lcs(2, 4, 2) == 2 * 1.0 * 0.5 / 1.5  # precision over the prediction, recall over the target
    assert rouge_l("", "a b") == 0.0 and rouge_l("a b", "") == 0.0


def test_empty_results_are_exact():
    from dataforge.generate.novelty import NoveltyResult

    assert NoveltyIndex().check("anything at all") == NoveltyResult(True, 0.0, None)
    assert NoveltyIndex(["a b"]).check("!!!") == NoveltyResult(True, 0.0, None)
    assert NoveltyIndex(["a b"]).check("x y") == NoveltyResult(True, 0.0, None)  # no shared token: no candidate


@pytest.mark.parametrize("pool,probe,threshold", [
    (["c"], "c z", 0.0),           # any shared token counts at threshold 0, even with a 1-token text
    (["b"], "a b", 0.5),           # F = 2/3
    (["b"], "a c d e b", 0.3),     # F = 1/3, the shared token is the probe's most common-looking one
])
def test_one_token_partners_are_never_skipped(pool, probe, threshold):
    assert rouge_l(probe, pool[0]) > threshold
    res = NoveltyIndex(pool, threshold=threshold).check(probe)
    assert not res.kept and res.max_score == rouge_l(probe, pool[0]) and res.most_similar == pool[0]


def test_ties_for_the_maximum_go_to_the_earliest_pool_text():
    idx = NoveltyIndex(["a b c x", "a b c y"])
    assert idx.check("a b c z") == (False, 0.75, "a b c x")
    many = NoveltyIndex([f"a b c d e f w{i}" for i in range(40)])  # 40 equal candidates: the batched path
    res = many.check("a b c d e f q")
    assert res == (False, rouge_l("a b c d e f q", "a b c d e f w0"), "a b c d e f w0")


def _brute_mask(texts: list[str], pool: list[str], threshold: float) -> list[tuple[bool, float, str | None]]:
    """The sequential filter by brute force over every pair, with rouge_l (equal to rouge-score, see above)."""
    pool = list(pool)
    out = []
    for t in texts:
        best, best_text = 0.0, None
        for p in pool:
            f = rouge_l(t, p)
            if f > best:
                best, best_text = f, p
        keep = not best > threshold
        out.append((keep, best, best_text))
        if keep:
            pool.append(t)
    return out


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.3])
def test_a_crowded_pool_matches_brute_force(threshold):
    """Many texts over 14 words: postings hold many texts (the numpy path), candidates come in batches (the
    C path), the index re-ranks its tokens several times. Decisions, the exact max of every drop and the
    earliest text reaching it equal a brute force over all pairs."""
    rng = random.Random(11)
    vocab = _WORDS[:14]
    pool = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 12))) for _ in range(260)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) for _ in range(120)]
    idx = NoveltyIndex(pool, threshold=threshold)
    got = [idx.add_if_novel(t) for t in texts]
    want = _brute_mask(texts, pool, threshold)
    assert [g.kept for g in got] == [w[0] for w in want]
    for g, w in zip(got, want):
        if not g.kept:
            assert (g.max_score, g.most_similar) == (w[1], w[2])
    assert sum(g.kept for g in got) < len(got) and (threshold < 0.5 or sum(g.kept for g in got) > 0)


WORK_PAIRS, WORK_POOL = 9383, 350  # measured when the test was written (26% of all pairs)


def test_the_bounds_keep_the_work_small():
    """Work done on a fixed crowded corpus: the pairs that pass the length and prefix bounds (and so get an
    exact LCS) are today's count. A change that prunes less makes this larger: update it only on purpose,
    with `benchmarks/novelty.py` showing the speed."""
    rng = random.Random(11)
    vocab = _WORDS[:14]
    pool = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 12))) for _ in range(260)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) for _ in range(120)]
    idx = NoveltyIndex(pool)
    for t in texts:
        idx.add_if_novel(t)
    st = idx.stats
    assert st.checks == 120 and st.candidate_pairs == st.lcs_computed
    assert (st.candidate_pairs, len(idx)) == (WORK_PAIRS, WORK_POOL)
    assert st.candidate_pairs < 0.25 * 120 * len(idx)  # far fewer than all pairs


def test_int_list_fallback_converts_texts_already_in_the_pool(monkeypatch):
    monkeypatch.setattr(novelty, "_MAX_CHAR", 8)
    idx = NoveltyIndex(["a b c", "a b d"])  # 4 tokens: still characters
    assert idx._as_chars is True
    texts = ["e f g h i j", "a b c", "a b d x", "k l m a b c", "e f g h i"]
    got = [idx.add_if_novel(t) for t in texts]
    assert idx._as_chars is False and all(isinstance(d.seq, list) for d in idx._docs)
    want = _brute_mask(texts, ["a b c", "a b d"], 0.7)
    assert [g.kept for g in got] == [w[0] for w in want]
    assert [(g.max_score, g.most_similar) for g in got if not g.kept] == [(w[1], w[2]) for w in want if not w[0]]
    assert not got[1].kept and got[1].most_similar == "a b c"  # a text indexed before the switch still matches
