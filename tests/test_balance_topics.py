"""balance with topics clustered from real prompt embeddings (MiniLM on ONNX Runtime): the one balance test
that loads a model, kept apart so that mutation runs of balance's arithmetic (plan, levels, state) can map
only the fast tests (scripts/mutation_tests.toml)."""

from __future__ import annotations

import pytest

from dataforge.curate.balance import BalanceConfig, run_balance
from dataforge.errors import DataforgeError
from dataforge.io import read_records, write_records
from dataforge.records import Record


def test_topics_are_clustered_when_not_reused(tmp_path, monkeypatch, capsys):
    """Without --reuse-topics the records are embedded (real MiniLM) and clustered: 4 sources -> 4 topics that
    each hold one source, keys `NN_terms`, labels the terms, the model's names when asked, and the clustering
    facts in the stats; the gate's rejects beside the input are embedded and clustered too, but only counted.
    Embedding batches of 5 (not 1024), so that several batches and a short last one are exercised."""
    import json
    import re
    import time
    from collections import Counter

    from conftest import TEST_DATA
    from dataforge.curate import balance
    from dataforge.curate.labels import slug
    from dataforge.llm import BackendConfig, make_llm
    from dataforge.testing.loopback import LoopbackServer, last_user_message

    rows = [json.loads(line) for line in (TEST_DATA / "curate_topics.jsonl").read_text().splitlines()]
    recs = [Record(instruction=r["instruction"], output="ok", complexity=2.0, topic="ignored", meta={"source": r["source"]})
            for r in rows]
    recs[0] = recs[0].model_copy(update={"topic": None})  # one record without a topic: reuse is impossible
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, recs)
    monkeypatch.setattr(balance, "EMBED_BATCH", 5)
    monkeypatch.setenv("DATAFORGE_PROGRESS", "1")
    t0 = time.perf_counter()
    s = run_balance(src, out, BalanceConfig(reuse_topics=True, k=4, topic_cap_ratio=None), progress=True)
    wall = time.perf_counter() - t0
    bars = re.split(r"[\r\n]", capsys.readouterr().err)
    assert any(b.startswith("embed ") and " 48/" in b and "rec/s" in b for b in bars)  # no total: counted as read
    assert any(b.startswith("write ") and "48/48" in b for b in bars)
    d = s.details
    assert d["topics"] == 4 and d["kept"] == 48  # one level, no cap: everything is kept
    assert sorted(d["phase_s"]) == ["choose", "embed", "topics", "write"]
    kept = list(read_records(out))
    assert len(kept) == 48 and not (tmp_path / "out.jsonl.rejected.jsonl").read_text()
    by_topic: dict[str, Counter] = {}
    for r in kept:
        assert r.topic[:2].isdigit() and r.topic[2] == "_" and r.topic != "ignored"
        by_topic.setdefault(r.topic, Counter())[r.meta["source"]] += 1
    assert sorted(len(c) for c in by_topic.values()) == [1, 1, 1, 1]  # each topic is one source
    stats = json.loads((tmp_path / "out.jsonl.stats.json").read_text())
    facts = stats["balance"]["clustering"]
    assert facts["method"] == "kmeans" and facts["k"] == 4 and facts["cluster_s"] >= 0
    # the embedding time is the embedding pass's own (its phase clock sits inside it), within the run's
    assert d["phase_s"]["embed"] - 0.01 <= facts["embed_s"] <= wall
    assert sorted(stats["topics"]) == sorted(by_topic)
    for key, topic in stats["topics"].items():  # the label lists the topic's terms, which its key abbreviates
        assert topic["label"] != key and key == f"{key[:2]}_{slug(topic['label'].replace(', ', ' '))}"
    from dataforge.curate.balance import assign_topics

    with pytest.raises(DataforgeError, match="--name-topics needs a model"):
        assign_topics(recs, BalanceConfig(k=4, name_topics=True), llm=None, progress=False)

    def namer(body):
        text = last_user_message(body).lower()
        return "Topic: Baking Recipes" if "recipe" in text or "bake" in text else "Travel tips"

    gate_rejects = [Record(instruction=rows[i]["instruction"], topic="ignored", status="rejected",
                           reasons=["gate:coherence"]) for i in (1, 2)]
    write_records(tmp_path / "in.jsonl.rejected.jsonl", gate_rejects)
    with LoopbackServer(namer) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True))
        s = run_balance(src, out, BalanceConfig(k=4, name_topics=True), llm=llm, progress=False)
    d = s.details
    assert d["candidates"] == 48 and d["arrived_rejected"] == 0 and d["upstream_counted"] == 2 and d["kept"] == 48
    assert len(list(read_records(out))) == 48  # the upstream records are counted, never written
    names = {r.topic for r in read_records(out)}
    assert any(t.endswith("_baking_recipes") for t in names) and s.tokens.total > 0
    stats = json.loads((tmp_path / "out.jsonl.stats.json").read_text())
    assert stats["total"] == 50 and stats["rejected_by_stage"] == {"gate": 2}
    topics = stats["topics"]
    baking = [v for k, v in topics.items() if k.endswith("_baking_recipes")]
    assert baking and all(v["name"] == "Baking Recipes" and v["label"] and v["label"] != v["name"] for v in baking)
