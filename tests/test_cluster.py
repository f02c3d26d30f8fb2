"""Topic clustering on a small real text set with obvious topics (tests/data/curate_topics.jsonl:
12 hand-written requests each about cooking, Python, arithmetic word problems and travel), embedded with
the real MiniLM model."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score
from typer.testing import CliRunner

from conftest import TEST_DATA
from dataforge.cli import app
from dataforge.curate.cluster import candidate_ks, choose_k, cluster_embeddings
from dataforge.curate.labels import clean_name, ctfidf_terms, name_topics, topic_key
from dataforge.llm import BackendConfig, make_llm
from dataforge.testing.loopback import LoopbackServer

DATA = TEST_DATA / "curate_topics.jsonl"


@pytest.fixture(scope="module")
def topic_set(tmp_path_factory):
    from dataforge.quality.embed import get_embedder

    # module fixtures run before conftest's per-test cache isolation: name the same folder explicitly, so
    # nothing lands in the user's cache and the CLI test below reuses these embeddings and the loaded model
    cache = tmp_path_factory.getbasetemp() / "dataforge-cache"
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    texts = [r["instruction"] for r in rows]
    return texts, [r["source"] for r in rows], get_embedder(None, cache).encode(texts)


def majority_terms(labels, truth, terms):
    """source -> terms of the cluster holding most of that source's records."""
    out = {}
    for src in set(truth):
        c = Counter(int(l) for l, t in zip(labels, truth) if t == src).most_common(1)[0][0]
        out[src] = terms[c]
    return out


def test_auto_k_recovers_obvious_topics(topic_set):
    texts, truth, x = topic_set
    res = cluster_embeddings(x, "kmeans", None, k_max=8, seed=0)
    assert res.k == 4, res.silhouette_by_k
    assert normalized_mutual_info_score(truth, res.labels) > 0.9
    assert res.sizes == sorted(res.sizes, reverse=True)            # topic 00 is the largest
    terms = majority_terms(res.labels, truth, ctfidf_terms(texts, res.labels))
    assert "python" in terms["python"]
    assert {"recipe", "bake", "bread", "baking"} & set(terms["cooking"])
    assert {"trip", "visit", "plan", "travel"} & set(terms["travel"])
    again = cluster_embeddings(x, "kmeans", None, k_max=8, seed=0)
    assert again.labels.tolist() == res.labels.tolist()            # deterministic from the seed


def test_hdbscan_gives_every_record_a_topic(topic_set):
    _, truth, x = topic_set
    res = cluster_embeddings(x, "hdbscan", min_cluster_size=5, seed=0)
    assert len(res.labels) == len(truth) and res.labels.min() >= 0
    assert 2 <= res.k <= 6
    assert normalized_mutual_info_score(truth, res.labels) > 0.5


def test_choose_k_and_candidates():
    assert candidate_ks(2, 12) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 12]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.05 * rng.normal(size=(30, 16)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k, scores = choose_k(x, 2, 8)
    assert k == 3 and scores[3] == max(scores.values())


def test_labels_and_names():
    assert topic_key(3, ["recipe", "bake", "flour", "oven"]) == "03_recipe_bake_flour"
    assert topic_key(0, ["x"], "Baking Recipes!") == "00_baking_recipes"
    assert clean_name('Topic: "Baking Recipes".\nmore') == "Baking Recipes"
    assert clean_name("   \n") is None


def test_model_written_topic_names_over_loopback():
    def responder(body):
        prompt = json.dumps(body)
        return "Python Programming" if "python" in prompt else "Kitchen Recipes" if "recipe" in prompt else "???"

    with LoopbackServer(responder) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True))
        names = name_topics(llm, {0: ["python", "function"], 1: ["recipe", "bake"], 2: ["zzz"]},
                            {0: ["Write a Python function."], 1: ["Bake bread."]})
        assert len(srv.requests) == 3
    assert names == {0: "Python Programming", 1: "Kitchen Recipes", 2: None}


def test_balance_cli_clusters_and_writes_stats(tmp_path):
    out = tmp_path / "final.jsonl"
    result = CliRunner().invoke(app, ["balance", str(DATA), "-o", str(out), "--k-max", "8"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 48                                     # nothing rated, caps not reached: all kept
    by_topic = Counter((r["topic"], r["meta"]["source"]) for r in rows)
    assert len(by_topic) == 4 and all(n == 12 for n in by_topic.values())   # each topic is one source
    stats = json.loads((tmp_path / "final.jsonl.stats.json").read_text())
    assert set(stats["topics"]) == {r["topic"] for r in rows}
    assert stats["thin_levels"] == [] and stats["balance"]["clustering"]["k"] == 4


def test_balance_cli_names_topics_with_a_model(tmp_path):
    """--name-topics goes through the backend options to a real (loopback) OpenAI server."""
    def responder(body):
        text = json.dumps(body).lower()
        for word, name in (("python", "Python Coding"), ("recipe", "Home Cooking"), ("trip", "Travel Plans")):
            if word in text:
                return name
        return "Everyday Arithmetic"

    out = tmp_path / "final.jsonl"
    with LoopbackServer(responder) as srv:
        result = CliRunner().invoke(app, ["balance", str(DATA), "-o", str(out), "--k", "4", "--name-topics",
                                          "--base-url", srv.base_url, "--model", "test", "--no-cache"])
        assert result.exit_code == 0, result.output
        assert len(srv.requests) == 4
    topics = {json.loads(line)["topic"] for line in out.read_text().splitlines()}
    assert {t.split("_", 1)[1] for t in topics} == {"python_coding", "home_cooking", "travel_plans", "everyday_arithmetic"}
    stats = json.loads((tmp_path / "final.jsonl.stats.json").read_text())
    assert {v["name"] for v in stats["topics"].values()} == {"Python Coding", "Home Cooking", "Travel Plans",
                                                             "Everyday Arithmetic"}


# ---------------------------------------------------------------------------- at scale: on disk, streamed

def _sklearn_ctfidf(docs, labels, top_n=6, max_features=50000):
    """The labels as they were computed with all documents in one CountVectorizer (the reference)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    from dataforge.curate.labels import _TOKEN

    classes = sorted(set(labels.tolist()))
    vec = CountVectorizer(stop_words="english", lowercase=True, token_pattern=_TOKEN,
                          min_df=2 if len(docs) >= 50 else 1, max_features=max_features)
    counts = vec.fit_transform(docs)
    vocab = np.array(vec.get_feature_names_out())
    index = {c: i for i, c in enumerate(classes)}
    onehot = sparse.csr_matrix((np.ones(len(labels)), ([index[c] for c in labels.tolist()], np.arange(len(labels)))),
                               shape=(len(classes), len(labels)))
    per_class = np.asarray((onehot @ counts).todense(), dtype=np.float64)
    words = per_class.sum(axis=1, keepdims=True)
    score = per_class / np.maximum(words, 1.0) * np.log1p(max(float(words.mean()), 1.0) / np.maximum(per_class.sum(axis=0), 1.0))
    out = {}
    for c, row in zip(classes, score):
        terms = []
        for j in np.argsort(-row, kind="stable")[: top_n * 3]:
            if row[j] <= 0:
                break
            if not any(str(vocab[j]) in t or t in str(vocab[j]) for t in terms):
                terms.append(str(vocab[j]))
            if len(terms) >= top_n:
                break
        out[int(c)] = terms
    return out


@pytest.mark.parametrize("max_features", [50000, 40])
def test_term_counts_in_chunks_give_countvectorizers_labels(monkeypatch, max_features):
    from dataforge.curate.labels import TermCounter

    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    docs = [r["instruction"] for r in rows] * 2  # 96 documents: min_df 2 applies
    labels = np.array([hash(r["source"]) % 3 for r in rows] * 2)
    monkeypatch.setattr(TermCounter, "MAX_FEATURES", max_features)  # 40: the frequency cut decides too
    counter = TermCounter()
    for s in range(0, len(docs), 7):  # chunks that split classes and documents unevenly
        counter.add(docs[s:s + 7], labels[s:s + 7])
    want = _sklearn_ctfidf(docs, labels, max_features=max_features)
    assert counter.top_terms() == want and any(want.values())
    assert ctfidf_terms(docs[:10], labels[:10]) == _sklearn_ctfidf(docs[:10], labels[:10])  # min_df 1 below 50


def test_cluster_rows_on_disk_fits_a_sample_and_assigns_everything(topic_set, tmp_path):
    from dataforge.curate.cluster import cluster_rows
    from dataforge.io.rows import RowFile

    texts, truth, x = topic_set
    rows = RowFile(tmp_path / "x.f32", len(x), x.shape[1])
    rows.write(x, np.arange(len(x)))
    whole = cluster_rows(rows, k=4, seed=0)  # within fit_max: the in-memory clustering, unchanged
    assert np.array_equal(whole.labels, cluster_embeddings(x, k=4, seed=0).labels)
    part = cluster_rows(rows, k=4, seed=0, fit_max=30)  # fitted on 30 points, all 48 assigned
    assert part.k == 4 and len(part.labels) == len(x) and part.sizes == sorted(part.sizes, reverse=True)
    # the reference: fit on the same seeded sample, every point to the nearest centre of the fitted clusters
    picked = np.sort(np.random.default_rng(0).choice(len(x), size=30, replace=False))
    fit = cluster_embeddings(x[picked], k=4, seed=0)
    centres = np.stack([x[picked][fit.labels == c].mean(axis=0) for c in range(fit.k)])
    nearest = np.argmax(x @ (centres / np.linalg.norm(centres, axis=1, keepdims=True)).T, axis=1)
    assert normalized_mutual_info_score(nearest, part.labels) == pytest.approx(1.0)  # the same partition
    assert normalized_mutual_info_score(truth, part.labels) > 0.5  # still topics, from 30 of 48 points
