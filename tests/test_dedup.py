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
