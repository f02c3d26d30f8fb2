"""Duplicate removal in three passes: exact (normalised text hash), near-duplicate (MinHash LSH,
datasketch) and semantic (embedding cosine >= threshold, blockwise matrix products).

Greedy and best-first: candidates are visited from the best-scored down; a candidate that duplicates
an already *kept* one is marked ``duplicate_of:<kept id>``, otherwise it is kept. So the survivor of
every group is its best record, survivors are never duplicates of each other, and a reason always names
a record that is still in the output. Memory grows with the kept set only (the semantic pass holds
the kept embeddings and compares a block of candidates against them with one matrix product).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case, accents-as-composed, punctuation and whitespace folded: what a person would call 'the same'."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _WS.sub(" ", _PUNCT.sub(" ", text)).strip()


def exact_key(text: str) -> str:
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()


def shingles(text: str, k: int) -> set[bytes]:
    words = normalise(text).split()
    if len(words) <= k:
        return {" ".join(words).encode("utf-8")} if words else {b""}
    return {" ".join(words[i:i + k]).encode("utf-8") for i in range(len(words) - k + 1)}


@dataclass
class DedupResult:
    """`duplicate_of[i]` = index of the kept item that item i duplicates (None: kept); `how[i]` = pass."""

    duplicate_of: list[int | None]
    how: list[str | None]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> list[int]:
        return [i for i, d in enumerate(self.duplicate_of) if d is None]


def dedup(texts: Sequence[str], order: Sequence[int], *, exact: bool = True, near: float | None = 0.8,
          num_perm: int = 128, shingle: int = 5, embeddings: np.ndarray | None = None,
          semantic: float | None = 0.95, block: int = 4096) -> DedupResult:
    """Mark duplicates among `texts`, visiting them in `order` (best first).

    `embeddings`: L2-normalised rows aligned with `texts` (needed for the semantic pass).
    """
    n = len(texts)
    dup: list[int | None] = [None] * n
    how: list[str | None] = [None] * n
    counts = {"exact": 0, "near": 0, "semantic": 0}
    order = list(order)
    if exact:
        seen: dict[str, int] = {}
        for i in order:
            key = exact_key(texts[i])
            if key in seen:
                dup[i], how[i] = seen[key], "exact"
                counts["exact"] += 1
            else:
                seen[key] = i
    if near is not None and near > 0:
        _near_pass(texts, order, dup, how, counts, near, num_perm, shingle)
    if semantic is not None and semantic > 0 and embeddings is not None:
        _semantic_pass(embeddings, order, dup, how, counts, semantic, block)
    return DedupResult(dup, how, counts)


def _near_pass(texts, order, dup, how, counts, threshold, num_perm, k) -> None:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes: dict[int, MinHash] = {}
    pos = {j: p for p, j in enumerate(order)}
    for i in order:
        if dup[i] is not None:
            continue
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(shingles(texts[i], k)))
        best = None
        for cand in lsh.query(m):
            j = int(cand)
            if hashes[j].jaccard(m) >= threshold and (best is None or pos[j] < pos[best]):
                best = j
        if best is not None:
            dup[i], how[i] = best, "near"
            counts["near"] += 1
        else:
            lsh.insert(str(i), m)
            hashes[i] = m


def _semantic_pass(emb: np.ndarray, order, dup, how, counts, threshold, block) -> None:
    emb = np.asarray(emb, dtype=np.float32)
    live = [i for i in order if dup[i] is None]
    kept_idx: list[int] = []
    kept_blocks: list[np.ndarray] = []
    for start in range(0, len(live), block):
        ids = live[start:start + block]
        x = emb[ids]
        best_sim = np.full(len(ids), -1.0, dtype=np.float32)
        best_j = np.full(len(ids), -1, dtype=np.int64)
        offset = 0
        for kb in kept_blocks:  # candidates vs everything kept so far, one product per kept block
            s = x @ kb.T
            j = s.argmax(axis=1)
            v = s[np.arange(len(ids)), j]
            better = v > best_sim
            best_sim[better], best_j[better] = v[better], j[better] + offset
            offset += kb.shape[0]
        inner = x @ x.T  # candidates vs earlier candidates of the same block, in visiting order
        block_kept: list[int] = []
        for a, i in enumerate(ids):
            if best_sim[a] >= threshold:
                dup[i], how[i] = kept_idx[best_j[a]], "semantic"
                counts["semantic"] += 1
                continue
            if block_kept:
                sims = inner[a, block_kept]
                b = int(sims.argmax())
                if sims[b] >= threshold:
                    dup[i], how[i] = ids[block_kept[b]], "semantic"
                    counts["semantic"] += 1
                    continue
            block_kept.append(a)
        if block_kept:
            kept_idx.extend(ids[a] for a in block_kept)
            kept_blocks.append(x[block_kept])
