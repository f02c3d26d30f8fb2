"""Readable topic labels from each cluster's distinctive words (class-based TF-IDF).

All documents of a cluster are treated as one big document: a term scores high for a cluster when it is
frequent there (term frequency within the class) and rare across clusters (log(1 + A / f), A = mean
words per class, f = the term's frequency over all classes). Optionally a model turns the terms and a
few examples into a short name (prompt template ``topic_name``); off by default.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

_TOKEN = r"(?u)\b[^\W\d_][\w+#\-]*[\w+#]\b|\b[^\W\d_]{2}\b"


def ctfidf_terms(docs: Sequence[str], labels: np.ndarray, top_n: int = 6) -> dict[int, list[str]]:
    """Top `top_n` distinctive terms per cluster id."""
    counter = TermCounter()
    counter.add(docs, labels)
    return counter.top_terms(top_n)


class TermCounter:
    """Class-based term counts gathered a chunk of documents at a time, so a million documents never sit
    in memory together: per class, how often each term occurs, and per term, in how many documents.

    `top_terms` then chooses the vocabulary and scores exactly as scikit-learn's CountVectorizer would
    have over all documents at once (English stop words, lower case, `_TOKEN`, min_df 2 from 50
    documents on, the 50,000 most frequent terms), so the labels do not depend on the chunking.
    """

    MAX_FEATURES = 50000

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        self._analyze = CountVectorizer(stop_words="english", lowercase=True, token_pattern=_TOKEN).build_analyzer()
        self.term_id: dict[str, int] = {}
        self.df: list[int] = []
        self.per_class: dict[int, Counter[int]] = {}
        self.docs = 0

    def add(self, docs: Sequence[str], labels: np.ndarray | Sequence[int]) -> None:
        for doc, label in zip(docs, np.asarray(labels).tolist()):
            self.docs += 1
            counts = self.per_class.setdefault(int(label), Counter())
            seen: set[int] = set()
            for term in self._analyze(doc):
                t = self.term_id.get(term)
                if t is None:
                    t = self.term_id[term] = len(self.df)
                    self.df.append(0)
                counts[t] += 1
                if t not in seen:
                    seen.add(t)
                    self.df[t] += 1

    def _vocabulary(self) -> np.ndarray:
        """Term ids kept, in CountVectorizer's (alphabetical) column order: min_df, then max_features."""
        terms = sorted(self.term_id)
        ids = np.array([self.term_id[t] for t in terms], dtype=np.int64)
        if not len(ids):
            return ids
        min_df = 2 if self.docs >= 50 else 1
        mask = np.asarray(self.df, dtype=np.int64)[ids] >= min_df
        if mask.sum() > self.MAX_FEATURES:
            tfs = np.zeros(len(self.df), np.int64)
            for counts in self.per_class.values():
                for t, n in counts.items():
                    tfs[t] += n
            tfs = tfs[ids]
            keep = np.zeros(len(ids), bool)
            keep[np.where(mask)[0][(-tfs[mask]).argsort()[: self.MAX_FEATURES]]] = True
            mask = keep
        return ids[mask]

    def top_terms(self, top_n: int = 6) -> dict[int, list[str]]:
        """Top `top_n` distinctive terms per class (class-based TF-IDF, see the module doc)."""
        classes = sorted(self.per_class)
        if not self.docs or not classes:
            return {}
        vocab_ids = self._vocabulary()
        if not len(vocab_ids):  # only stop words, or nothing left after min_df
            return {c: [] for c in classes}
        column = {int(t): j for j, t in enumerate(vocab_ids)}
        per_class = np.zeros((len(classes), len(vocab_ids)), dtype=np.float64)  # classes x terms
        for row, c in enumerate(classes):
            for t, n in self.per_class[c].items():
                j = column.get(t)
                if j is not None:
                    per_class[row, j] = n
        names = {t: term for term, t in self.term_id.items()}
        vocab = [names[int(t)] for t in vocab_ids]
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
                term = vocab[j]
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
