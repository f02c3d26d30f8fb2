"""Topics for balance and the report: clusters of the prompts' embeddings, named by their distinctive
terms (and, on request, by a model).

`topics_of_rows` works from compact state: embeddings in `Rows` (on disk for big inputs) and the prompt
texts as a stream read once, so a million records get topics in bounded memory. `assign_topics` is the
in-memory form for a list of records.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from ..errors import DataforgeError
from ..io.rows import ArrayRows, Rows
from ..progress import progress_bar
from ..records import Record

if TYPE_CHECKING:
    from ..llm import LLM
    from .balance import BalanceConfig

EXAMPLES_PER_TOPIC = 4  # shown to the model that names a topic


def reused_topics(topics: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Topic keys already on the records, with the info `topics_of_rows` gives for clusters."""
    sizes = Counter(topics)
    return topics, {"topics": {k: {"label": k, "terms": [], "name": None, "size": n} for k, n in sorted(sizes.items())},
                    "method": "reused", "k": len(sizes)}


def topics_of_rows(vectors: Rows, texts: Iterable[str], cfg: "BalanceConfig", *, llm: "LLM | None" = None,
                   embed_s: float = 0.0) -> tuple[np.ndarray, dict[int, str], dict[str, Any]]:
    """(cluster id per row, topic key per cluster id, info). `texts`: the rows' prompts, in row order."""
    from .cluster import cluster_rows
    from .labels import TermCounter, name_topics, topic_key

    res = cluster_rows(vectors, cfg.method, cfg.k, k_min=cfg.k_min, k_max=cfg.k_max,
                       min_cluster_size=cfg.min_cluster_size, seed=cfg.seed)
    counter = TermCounter()
    examples: dict[int, list[str]] = {c: [] for c in range(res.k)}
    for start, chunk in _chunks(texts, 4096):
        labels = res.labels[start:start + len(chunk)]
        counter.add(chunk, labels)
        for text, c in zip(chunk, labels.tolist()):
            if len(examples[c]) < EXAMPLES_PER_TOPIC:
                examples[c].append(text)
    terms = counter.top_terms()
    names: dict[int, str | None] = {}
    if cfg.name_topics:
        if llm is None:
            raise DataforgeError("--name-topics needs a model (backend options or DATAFORGE_* environment)")
        names = name_topics(llm, terms, examples)
    key_of = {c: topic_key(c, terms.get(c, []), names.get(c)) for c in range(res.k)}
    sizes = res.sizes
    info = {
        "method": res.method, "k": res.k, "noise": res.noise, "embed_s": round(embed_s, 2),
        "cluster_s": round(res.seconds, 2),
        "silhouette_by_k": {str(k): round(v, 4) for k, v in res.silhouette_by_k.items()},
        "topics": {key_of[c]: {"label": ", ".join(terms.get(c, [])) or key_of[c], "terms": terms.get(c, []),
                               "name": names.get(c), "size": sizes[c]} for c in range(res.k)},
    }
    return res.labels, key_of, info


def _chunks(items: Iterable[str], size: int) -> Iterator[tuple[int, list[str]]]:
    chunk: list[str] = []
    start = 0
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield start, chunk
            start += len(chunk)
            chunk = []
    if chunk:
        yield start, chunk


def assign_topics(records: list[Record], cfg: "BalanceConfig", *, llm: "LLM | None" = None,
                  progress: bool = True) -> tuple[list[str], dict]:
    """Topic key per record plus {key: {"label", "terms", "name", "size"}} and clustering facts."""
    if cfg.reuse_topics and records and all(r.topic for r in records):
        return reused_topics([r.topic or "" for r in records])
    from ..quality.embed import get_embedder

    texts = [r.prompt_text for r in records]
    embedder = get_embedder(cfg.embedder)
    t0 = time.perf_counter()
    vectors = []
    step = 2048
    with progress_bar("embed", total=len(texts), enabled=progress) as bar:
        for i in range(0, len(texts), step):
            vectors.append(embedder.encode(texts[i:i + step]))
            bar.advance(len(texts[i:i + step]))
    x = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    labels, key_of, info = topics_of_rows(ArrayRows(x), texts, cfg, llm=llm, embed_s=time.perf_counter() - t0)
    return [key_of[int(c)] for c in labels], info
