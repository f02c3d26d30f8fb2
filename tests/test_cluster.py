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
