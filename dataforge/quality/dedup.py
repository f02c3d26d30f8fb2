"""Duplicate removal in three passes: exact (normalised text hash), near-duplicate (MinHash LSH) and
semantic (embedding cosine >= threshold, blocked matrix products).

Greedy and best-first: candidates are visited from the best-scored down; a candidate that duplicates
an already *kept* one is marked ``duplicate_of:<kept id>``, otherwise it is kept. So the survivor of
every group is its best record, survivors are never duplicates of each other, and a reason always names
a record that is still in the output.

The passes work on compact per-record state, not on texts: a 20-byte digest (`exact_digest`), a MinHash
signature (`dedup_near`) and an embedding (`dedup_semantic`), the last two as `Rows` that may live on
disk (`dataforge.io.rows.RowFile`), so a million records are deduplicated in bounded memory
(`dedup_state`). `dedup(texts, ...)` computes that state in memory for small inputs.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..io.rows import ArrayRows, Rows

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_WS = re.compile(r"\s+")
HOW = ("exact", "near", "semantic")  # how[i] holds an index into this (-1: not a duplicate)


def normalise(text: str) -> str:
    """Case, accents-as-composed, punctuation and whitespace folded: what a person would call 'the same'."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _WS.sub(" ", _PUNCT.sub(" ", text)).strip()


def exact_digest(text: str) -> bytes:
    """SHA-1 of the normalised text: equal for exact duplicates (20 bytes per record)."""
    return hashlib.sha1(normalise(text).encode("utf-8")).digest()


def exact_key(text: str) -> str:
    return exact_digest(text).hex()


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


@dataclass
class Decisions:
    """The passes' answer over n records: `dup[i]` the kept record i duplicates (-1: none), `how[i]` the
    pass (index into `HOW`, -1: none), and the count per pass."""

    dup: np.ndarray
    how: np.ndarray
    counts: dict[str, int]

    @classmethod
    def none(cls, n: int) -> "Decisions":
        return cls(np.full(n, -1, np.int64), np.full(n, -1, np.int8), {name: 0 for name in HOW})


def exact_pass(keys: np.ndarray, order: Sequence[int], d: Decisions) -> None:
    """Within each group of equal digests (`keys`: (n, 20) uint8), the best-placed survives."""
    order = np.asarray(order, dtype=np.int64)
    if len(order) < 2:
        return
    k = np.ascontiguousarray(keys[order]).view(np.dtype((np.void, keys.shape[1]))).ravel()
    _, group = np.unique(k, return_inverse=True)
    srt = np.lexsort((np.arange(len(order)), group))  # by group, then visiting position
    g = group[srt]
    first = np.r_[True, g[1:] != g[:-1]]
    survivor = order[srt[np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))]]
    dups = ~first
    rec = order[srt[dups]]
    d.dup[rec], d.how[rec] = survivor[dups], HOW.index("exact")
    d.counts["exact"] += int(dups.sum())


def dedup_passes(order: Sequence[int], n: int, *, keys: np.ndarray | None = None, signatures: Rows | None = None,
                 near: float | None = None, vectors: Rows | None = None, semantic: float | None = None,
                 block: int = 4096, kept: Rows | None = None,
                 advance: Callable[[int], None] | None = None) -> Decisions:
    """Run the passes whose state is given over the records in `order` (best first) among n records."""
    from .dedup_near import near_pass
    from .dedup_semantic import semantic_pass

    d = Decisions.none(n)
    if keys is not None:
        exact_pass(keys, order, d)
    if near and signatures is not None:
        near_pass(signatures, order, d.dup, d.how, d.counts, near, HOW.index("near"))
    if semantic and vectors is not None:
        semantic_pass(vectors, order, d.dup, d.how, d.counts, semantic, block, HOW.index("semantic"), kept=kept,
                      advance=advance)
    return d


def dedup(texts: Sequence[str], order: Sequence[int], *, exact: bool = True, near: float | None = 0.8,
          num_perm: int = 128, shingle: int = 5, embeddings: np.ndarray | None = None,
          semantic: float | None = 0.95, block: int = 4096) -> DedupResult:
    """Mark duplicates among `texts`, visiting them in `order` (best first), everything in memory.

    `embeddings`: L2-normalised rows aligned with `texts` (needed for the semantic pass).
    """
    from .dedup_near import Signer

    keys = np.frombuffer(b"".join(exact_digest(t) for t in texts), np.uint8).reshape(len(texts), 20) if exact else None
    sigs = ArrayRows(Signer(num_perm, shingle).sign(texts)) if near else None
    vecs = ArrayRows(np.asarray(embeddings, np.float32)) if semantic and embeddings is not None else None
    d = dedup_passes(order, len(texts), keys=keys, signatures=sigs, near=near, vectors=vecs, semantic=semantic,
                     block=block)
    return DedupResult([int(x) if x >= 0 else None for x in d.dup],
                       [HOW[h] if h >= 0 else None for h in d.how], d.counts)
