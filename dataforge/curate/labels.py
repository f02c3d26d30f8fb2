"""Readable topic labels from each cluster's distinctive words (class-based TF-IDF).

All documents of a cluster are treated as one big document: a term scores high for a cluster when it is
frequent there (term frequency within the class) and rare across clusters (log(1 + A / f), A = mean
words per class, f = the term's frequency over all classes). Optionally a model turns the terms and a
few examples into a short name (prompt template ``topic_name``); off by default.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_TOKEN = r"(?u)\b[^\W\d_][\w+#\-]*[\w+#]\b|\b[^\W\d_]{2}\b"


def ctfidf_terms(docs: Sequence[str], labels: np.ndarray, top_n: int = 6) -> dict[int, list[str]]:
    """Top `top_n` distinctive terms per cluster id."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    if not len(docs) or not classes:
        return {}
    vec = CountVectorizer(stop_words="english", lowercase=True, token_pattern=_TOKEN,
                          min_df=2 if len(docs) >= 50 else 1, max_features=50000)
    try:
        counts = vec.fit_transform(docs)
    except ValueError:  # only stop words / empty vocabulary
        return {c: [] for c in classes}
    vocab = np.array(vec.get_feature_names_out())
    index = {c: i for i, c in enumerate(classes)}
    onehot = sparse.csr_matrix((np.ones(len(labels)), ([index[c] for c in labels.tolist()], np.arange(len(labels)))),
                               shape=(len(classes), len(labels)))
    per_class = np.asarray((onehot @ counts).todense(), dtype=np.float64)     # classes x terms
    words_per_class = per_class.sum(axis=1, keepdims=True)
    tf = per_class / np.maximum(words_per_class, 1.0)
    freq = per_class.sum(axis=0)
    avg_words = max(float(words_per_class.mean()), 1.0)
    idf = np.log1p(avg_words / np.maximum(freq, 1.0))
    score = tf * idf
    out: dict[int, list[str]] = {}
    for c, row in zip(classes, score):
        top = np.argsort(-row, kind="stable")[: top_n * 3]
        terms: list[str] = []
        for j in top:
            if row[j] <= 0:
                break
            term = str(vocab[j])
            if any(term in t or t in term for t in terms):   # "python" vs "python3": keep one
                continue
            terms.append(term)
            if len(terms) >= top_n:
                break
        out[int(c)] = terms
    return out


def slug(text: str, max_words: int = 3) -> str:
    words = re.findall(r"[a-z0-9+#]+", text.lower())
    return "_".join(words[:max_words]) or "misc"


def topic_key(cluster_id: int, terms: list[str], name: str | None = None) -> str:
    """The value stored in `record.topic`: stable number first, words after, e.g. `03_recipe_bake_flour`."""
    return f"{cluster_id:02d}_{slug(name) if name else slug(' '.join(terms))}"


def clean_name(text: str, max_words: int = 6) -> str | None:
    """First line of a model's answer, without quotes, labels or trailing punctuation."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(topic|name|label)\s*:\s*", "", line.strip(), flags=re.I).strip(" \"'`*.#-")
        if re.search(r"[^\W_]", line):          # at least one letter or digit
            return " ".join(line.split()[:max_words])
    return None


def name_topics(llm, terms: dict[int, list[str]], examples: dict[int, list[str]], max_tokens: int = 16) -> dict[int, str | None]:
    """Ask the model for a short name per topic (template ``topic_name``); None where it gave nothing usable."""
    from ..llm import run_sync
    from ..llm.base import GenParams
    from ..prompts import PromptLibrary

    lib = PromptLibrary()
    ids = sorted(terms)
    prompts = [lib.render("topic_name", llm.profile, terms=terms[c], examples=[e[:200] for e in examples.get(c, [])[:4]])
               for c in ids]
    params = GenParams(temperature=0.0, max_tokens=max_tokens, seed=0)
    completions = run_sync(llm.generate_many(prompts, params))
    return {c: clean_name(comp.text) for c, comp in zip(ids, completions)}
