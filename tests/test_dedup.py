"""Dedup with planted duplicates: exact (case/punctuation variants), near (a word changed in a long
prompt), semantic (paraphrases, real MiniLM); the best-scored record of a group survives."""

from __future__ import annotations

from dataforge.quality.dedup import dedup, exact_key, normalise
from dataforge.quality.embed import get_embedder

LONG = ("Write a short story about a lighthouse keeper who finds a message in a bottle that was written by "
        "her grandmother fifty years ago, and describe how the discovery changes her plans for the winter.")


def test_normalise_folds_case_space_and_punctuation():
    assert normalise("  What is   the Capital of FRANCE?? ") == "what is the capital of france"
    assert exact_key("What is the capital of France?") == exact_key("what is the capital of france")
    assert exact_key("What is the capital of France?") != exact_key("What is the capital of Spain?")


def test_exact_and_near_duplicates_keep_the_best():
    texts = [
        "What is the capital of France?",            # 0
        "what is the capital of france",             # 1 exact dup of 0 after normalising
        LONG,                                         # 2
        LONG.replace("fifty", "sixty"),               # 3 near dup of 2 (one word)
        "Explain how vaccines train the immune system.",  # 4 unrelated
        "What is the capital of Spain?",              # 5 similar words, different question
    ]
    order = [1, 0, 3, 2, 4, 5]  # best first: 1 beats 0, 3 beats 2
    res = dedup(texts, order, near=0.7, semantic=None)
    assert res.duplicate_of == [1, None, 3, None, None, None]
    assert res.how[0] == "exact" and res.how[2] == "near"
    assert res.counts == {"exact": 1, "near": 1, "semantic": 0}
    assert sorted(res.kept) == [1, 3, 4, 5]


def test_semantic_duplicates_catch_paraphrases_not_neighbours():
    texts = [
        "How do I bake a loaf of bread at home?",
        "What are the steps to make a loaf of bread at home?",       # paraphrase of 0
        "How can I improve my sleep at night?",
        "What can I do to sleep better at night?",                   # paraphrase of 2
        "How do I change a flat tyre on a bicycle?",
        "Write a haiku about the autumn moon.",
    ]
    emb = get_embedder().encode(texts)
    order = list(range(len(texts)))
    res = dedup(texts, order, exact=True, near=None, embeddings=emb, semantic=0.8, block=2)  # block < n: cross-block path
    assert res.duplicate_of[1] == 0 and res.duplicate_of[3] == 2
    assert res.duplicate_of[0] is None and res.duplicate_of[2] is None
    assert res.duplicate_of[4] is None and res.duplicate_of[5] is None
    assert res.counts["semantic"] == 2
    # the same with one big block gives the same answer
    assert dedup(texts, order, near=None, embeddings=emb, semantic=0.8, block=4096).duplicate_of == res.duplicate_of
    # a stricter threshold keeps the paraphrases apart
    assert dedup(texts, order, near=None, embeddings=emb, semantic=0.99).counts["semantic"] == 0


# ---------------------------------------------------------------------------- the passes over compact state

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dataforge.io.rows import ArrayRows, RowFile  # noqa: E402
from dataforge.quality.dedup import shingles  # noqa: E402
from dataforge.quality.dedup_near import Signer  # noqa: E402

WORDS = "alpha beta gamma delta river stone cloud maple ember frost quill lantern orbit cedar harbor violet".split()


def _variants(rng: random.Random, n: int) -> list[str]:
    """Texts in families: a base of 30-60 words and copies with one to three words changed, so Jaccard
    similarities fall on both sides of the thresholds; some exact copies (case and punctuation)."""
    texts: list[str] = []
    while len(texts) < n:
        base = [rng.choice(WORDS) for _ in range(rng.randint(30, 60))]
        texts.append(" ".join(base))
        for _ in range(rng.randint(0, 4)):
            v = list(base)
            for _ in range(rng.randint(1, 3)):
                v[rng.randrange(len(v))] = rng.choice(WORDS)
            texts.append(" ".join(v).upper() + "!" if rng.random() < 0.2 else " ".join(v))
    return texts[:n]


def _datasketch_near(texts, order, threshold, num_perm=128, k=5):
    """The gate's near pass as it was: datasketch's MinHashLSH, queried best first, kept ones inserted."""
    from datasketch import MinHash, MinHashLSH

    lsh, hashes, pos, dup = MinHashLSH(threshold=threshold, num_perm=num_perm), {}, {j: p for p, j in enumerate(order)}, {}
    for i in order:
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(shingles(texts[i], k)))
        best = None
        for cand in lsh.query(m):
            j = int(cand)
            if hashes[j].jaccard(m) >= threshold and (best is None or pos[j] < pos[best]):
                best = j
        if best is not None:
            dup[i] = best
        else:
            lsh.insert(str(i), m)
            hashes[i] = m
    return dup


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (1, 0.7), (2, 0.8), (3, 0.9)])
def test_near_pass_decides_what_datasketch_lsh_decided(seed, threshold):
    rng = random.Random(seed)
    texts = _variants(rng, 120)
    order = list(range(len(texts)))
    rng.shuffle(order)
    want = _datasketch_near(texts, order, threshold)
    assert len(want) >= 5, "the families must give the pass work"
    got = dedup(texts, order, exact=False, near=threshold, semantic=None)
    assert {i: d for i, d in enumerate(got.duplicate_of) if d is not None} == want


def test_signatures_equal_datasketch_minhash():
    from datasketch import MinHash

    texts = _variants(random.Random(7), 20) + ["", "one"]
    sig = Signer(64, 3).sign(texts)
    for t, row in zip(texts, sig):
        m = MinHash(num_perm=64, seed=1)
        m.update_batch(list(shingles(t, 3)))
        assert np.array_equal(m.hashvalues, row)


def test_exact_pass_keeps_the_best_placed_of_each_group():
    rng = random.Random(3)
    texts = [rng.choice(["A b", "a B!", "c d", "C  d", "e", "f g h"]) for _ in range(50)]
    order = list(range(50))
    rng.shuffle(order)
    first: dict[str, int] = {}
    want = {}
    for i in order:
        key = exact_key(texts[i])
        if key in first:
            want[i] = first[key]
        else:
            first[key] = i
    got = dedup(texts, order, exact=True, near=None, semantic=None)
    assert {i: d for i, d in enumerate(got.duplicate_of) if d is not None} == want
    assert got.counts["exact"] == len(want)


def _brute_semantic(x, order, threshold):
    """Best first, everything in one matrix: a duplicate of the most similar kept earlier record."""
    sims = x @ x.T
    kept: list[int] = []
    dup = {}
    for i in order:
        if kept:
            s = sims[i, kept]
            b = int(s.argmax())
            if s[b] >= threshold:
                dup[i] = kept[b]
                continue
        kept.append(i)
    return dup


def test_semantic_pass_on_disk_in_blocks_equals_one_matrix(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    x = np.concatenate([base, base[:25] + rng.normal(scale=0.15, size=(25, 16))])  # 25 planted neighbours
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    order = list(rng.permutation(len(x)))
    want = _brute_semantic(x, order, 0.95)
    assert 5 <= len(want) <= 25
    texts = [f"t{i}" for i in range(len(x))]
    assert {i: d for i, d in enumerate(dedup(texts, order, exact=False, near=None, embeddings=x, semantic=0.95,
                                             block=4096).duplicate_of) if d is not None} == want
    from dataforge.quality.dedup import dedup_passes

    rows = RowFile(tmp_path / "v.f32", len(x), 16)
    rows.write(x, np.arange(len(x)))
    for block in (1, 3, 64):  # across blocks: which records are duplicates never depends on the block size
        d = dedup_passes(order, len(x), vectors=rows, semantic=0.95, block=block,
                         kept=RowFile(tmp_path / f"k{block}.f32", len(x), 16))
        assert {i for i in range(len(x)) if d.dup[i] >= 0} == set(want)
        assert all(x[i] @ x[d.dup[i]] >= 0.95 and d.dup[d.dup[i]] < 0 for i in want)  # points at a survivor


def test_row_file_round_trip(tmp_path):
    rows = RowFile(tmp_path / "r.u32", 10, 3, np.uint32)
    rows.write(np.array([[1, 2, 3], [7, 8, 9]], np.uint32), [8, 2])
    assert rows.read(0, 10).sum() == 30 and rows.gather([8, 2]).tolist() == [[1, 2, 3], [7, 8, 9]]
    assert [s for s, _ in rows.windows(4)] == [0, 4, 8] and ArrayRows(rows.read(0, 10)).gather([2]).tolist() == [[7, 8, 9]]


def test_row_file_gather_maps_one_window_at_a_time(tmp_path, monkeypatch):
    """Rows in any order, with repeats, come back exactly; the file is never mapped wider than a window
    (a sample spread over a big file would otherwise touch, and hold, all of it)."""
    from dataforge.io import rows as rows_mod

    data = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    rows = RowFile(tmp_path / "g.f32", 1000, 4)
    rows.write(data, np.arange(1000))
    monkeypatch.setattr(rows_mod, "WINDOW_BYTES", 16 * 50)  # 50 rows of 16 bytes
    spans = []
    real_map = RowFile._map
    monkeypatch.setattr(RowFile, "_map", lambda self, mode, start=0, stop=None: (
        spans.append((start, stop)), real_map(self, mode, start, stop))[1])
    idx = np.random.default_rng(0).integers(0, 1000, 600)
    idx[:3] = [999, 0, 999]
    assert np.array_equal(rows.gather(idx), data[idx])
    assert spans and all(stop - start <= 50 for start, stop in spans)
    assert sorted({i for s, e in spans for i in range(s, e)} & set(idx.tolist())) == sorted(set(idx.tolist()))
    assert rows.gather([]).shape == (0, 4) and rows.gather(np.array([5])).tolist() == [data[5].tolist()]
