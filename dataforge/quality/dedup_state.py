"""`DedupState`: what the gate keeps per record for its decisions over the whole input, and nothing more.

Why: the gate used to hold every decided record until dedup had seen them all (about 23 KB a record: a
million records would need 23 GB). Now a record's full decided form lives only in the stage's journal
on disk, and this holds, per record: where its journal entry starts (8 bytes), its status rank and
quality (9 bytes), the digest of its normalised prompt (20 bytes) and, on disk (`RowFile`, read through
short-lived memory maps), its MinHash signature and prompt embedding. The decisions (`decide`) run over
that; the output is then written in a second streaming pass over the journal (`JournalReader`).

`features` computes a batch's digests, signatures and embeddings; it runs wherever the batch was scored
(a Ray worker too) and, for entries an interrupted run left in the journal, here on resume.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..io.rows import RowFile
from ..records import Record
from .dedup import Decisions, dedup_passes, exact_digest
from .rules import DedupRule
from .scores import quality_rank

if TYPE_CHECKING:
    from .embed import Embedder

RANK = {"accepted": 0, "review": 1, "rejected": 2}


def quality(r: Record) -> float:
    """Which record of a duplicate group survives: better status, then higher quality (one ranking for the
    whole tool, `dataforge.quality.scores`)."""
    return quality_rank(r.scores)


@dataclass
class Features:
    """Dedup state of the records `index` (those not rejected) of one batch, aligned row by row."""

    index: np.ndarray  # record positions in the input
    keys: np.ndarray  # (n, 20) uint8 digests of the normalised prompt
    signatures: np.ndarray | None  # (n, num_perm) MinHash values, when the near pass runs
    vectors: np.ndarray | None  # (n, dim) float32 prompt embeddings, when the semantic pass runs


def features(items: Sequence[tuple[int, Record]], rule: DedupRule, embedder: "Embedder | None") -> Features:
    """The dedup state of the records of `items` that take part in dedup (not rejected)."""
    from .dedup_near import Signer

    live = [(i, r) for i, r in items if r.status != "rejected"]
    texts = [r.prompt_text for _, r in live]
    keys = np.frombuffer(b"".join(exact_digest(t) for t in texts), np.uint8).reshape(len(texts), 20)
    sigs = Signer(rule.near.num_perm, rule.near.shingle).sign(texts) if rule.near.enabled else None
    vecs = embedder.encode(texts) if rule.semantic.enabled and embedder is not None and texts else None
    return Features(np.array([i for i, _ in live], np.int64), keys, sigs, vecs)


class DedupState:
    """Per-record state of n records (see the module doc); `work`: a scratch folder (the runner removes it)."""

    def __init__(self, n: int, work: Path, rule: DedupRule, enabled: bool):
        self.n, self.work, self.rule, self.enabled = n, Path(work), rule, enabled
        shutil.rmtree(self.work, ignore_errors=True)  # an interrupted run's scratch: rebuilt from the journal
        self.work.mkdir(parents=True, exist_ok=True)
        self.offset = np.full(n, -1, np.int64)
        self.rank = np.full(n, RANK["rejected"], np.int8)
        self.quality = np.zeros(n, np.float64)
        self.keys = np.zeros((n, 20), np.uint8)
        self.signatures: RowFile | None = None
        self.vectors: RowFile | None = None
        if enabled and rule.near.enabled:
            self.signatures = RowFile(self.work / "minhash.u32", n, rule.near.num_perm, np.uint32)

    def decided(self, i: int) -> bool:
        return self.offset[i] >= 0

    def count(self) -> int:
        return int((self.offset >= 0).sum())

    def put(self, items: Sequence[tuple[int, Record]], offsets: Sequence[int], feats: Features | None) -> None:
        """Record where each decided record's journal entry is, its rank and quality, and its features."""
        for (i, r), off in zip(items, offsets):
            self.offset[i] = off
            self.rank[i] = RANK[r.status]
            self.quality[i] = quality(r)
        if feats is None or not len(feats.index):
            return
        self.keys[feats.index] = feats.keys
        if self.signatures is not None and feats.signatures is not None:
            self.signatures.write(feats.signatures, feats.index)
        if feats.vectors is not None and len(feats.vectors) and self.rule.semantic.enabled:
            if self.vectors is None:  # the width is the embedder's: known with the first vectors
                self.vectors = RowFile(self.work / "embeddings.f32", self.n, feats.vectors.shape[1], np.float32)
            self.vectors.write(feats.vectors, feats.index)

    def order(self) -> np.ndarray:
        """The records dedup visits (not rejected), best first: status, then quality, then input position."""
        idx = np.flatnonzero(self.rank < RANK["rejected"])
        return idx[np.lexsort((idx, -self.quality[idx], self.rank[idx]))]

    def decide(self, advance: Callable[[int], None] | None = None) -> Decisions:
        """Exact, near and semantic passes over the state (see `dedup`)."""
        r = self.rule
        order = self.order()
        kept = None
        if r.semantic.enabled and self.vectors is not None:
            kept = RowFile(self.work / "kept.f32", len(order), self.vectors.width, np.float32)
        return dedup_passes(order, self.n, keys=self.keys if r.exact else None, signatures=self.signatures,
                            near=r.near.threshold if r.near.enabled else None, vectors=self.vectors,
                            semantic=r.semantic.threshold if r.semantic.enabled else None, block=r.semantic.block,
                            kept=kept, advance=advance)
