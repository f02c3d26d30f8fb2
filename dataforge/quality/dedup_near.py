"""Near-duplicates by MinHash: signatures in bulk, and the banded LSH pass over compact signatures.

The decisions are those of datasketch's `MinHashLSH` queried best-first (as the gate always did): a
candidate is a near duplicate of the best-placed *kept* record that shares one of its LSH bands exactly
and whose signatures agree on at least `threshold` of their values. What changed is the memory: the
index here is built from the signatures' band hashes (8 bytes per record and band), and only records
that share a band with another one ("suspects") take part in the best-first walk; every other record
has no candidate at all and is kept without a look. Band hashes only group records: equality of the
band values themselves is checked before a match counts, so a hash collision never makes a duplicate.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..io.rows import Rows

SEED = 1  # datasketch's default; the gate's signatures have always used it


class Signer:
    """MinHash signatures equal to ``datasketch.MinHash(num_perm, seed=1)`` fed the same shingles; the
    permutations are drawn once instead of once per record."""

    def __init__(self, num_perm: int = 128, shingle: int = 5):
        from datasketch import MinHash

        template = MinHash(num_perm=num_perm, seed=SEED)
        self.num_perm, self.shingle = num_perm, shingle
        self._perm, self._scheme = template.permutations, template.scheme
        self.dtype = template.hashvalues.dtype

    def sign(self, texts: Iterable[str]) -> np.ndarray:
        """(len(texts), num_perm) signatures of the texts' word shingles (see `dedup.shingles`)."""
        from datasketch import MinHash

        from .dedup import shingles

        rows = []
        for text in texts:
            m = MinHash(num_perm=self.num_perm, seed=SEED, permutations=self._perm, scheme=self._scheme)
            m.update_batch(list(shingles(text, self.shingle)))
            rows.append(m.hashvalues)
        return np.stack(rows) if rows else np.zeros((0, self.num_perm), self.dtype)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _band_hashes(sig: np.ndarray, bands: int, r: int) -> np.ndarray:
    """(bands, n) uint64 hashes of each band's values (a multiply-xorshift mix; collisions are allowed)."""
    out = np.empty((bands, len(sig)), np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(len(sig), 0x9E3779B97F4A7C15, np.uint64)
            for col in sig[:, b * r:(b + 1) * r].T.astype(np.uint64):
                h = (h ^ col) * np.uint64(0xBF58476D1CE4E5B9)
                h ^= h >> np.uint64(31)
            out[b] = h
    return out


def near_pass(signatures: Rows, order: Sequence[int], dup: np.ndarray, how: np.ndarray, counts: dict[str, int],
              threshold: float, code: int) -> None:
    """Mark near duplicates among `order`'s records not yet marked (best first; see the module doc)."""
    cand = np.asarray([i for i in order if dup[i] < 0], dtype=np.int64)  # visiting order
    if len(cand) < 2:
        return
    num_perm = signatures.width
    bands, r = lsh_bands(threshold, num_perm)
    # band hashes of every candidate, read in windows of the signature file in its own row order
    by_row = np.argsort(cand, kind="stable")
    hashes = np.empty((bands, len(cand)), np.uint64)
    step = 1 << 16
    for s in range(0, len(cand), step):
        pick = by_row[s:s + step]
        hashes[:, pick] = _band_hashes(signatures.gather(cand[pick]), bands, r)
    # buckets: runs of equal hash per band; a candidate in a bucket of two or more is a suspect
    bucket = np.empty((bands, len(cand)), np.int64)
    suspect = np.zeros(len(cand), bool)
    for b in range(bands):
        srt = np.argsort(hashes[b], kind="stable")
        h = hashes[b][srt]
        starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
        sizes = np.diff(np.r_[starts, len(h)])
        run = np.repeat(np.arange(len(starts)), sizes)
        bucket[b, srt] = run
        suspect[srt[np.repeat(sizes >= 2, sizes)]] = True
    del hashes
    where = np.flatnonzero(suspect)  # positions in visiting order
    if not len(where):
        return
    sig = signatures.gather(cand[where])  # suspects only: the records that can have a candidate
    bucket = bucket[:, where]
    kept_in: dict[tuple[int, int], list[int]] = {}
    for p in range(len(where)):
        best = None
        for b in range(bands):
            for q in kept_in.get((b, int(bucket[b, p])), ()):
                if (best is not None and q >= best) or not np.array_equal(sig[p, b * r:(b + 1) * r],
                                                                           sig[q, b * r:(b + 1) * r]):
                    continue
                if float(np.count_nonzero(sig[p] == sig[q])) / float(num_perm) >= threshold:
                    best = q
        i = int(cand[where[p]])
        if best is not None:
            dup[i], how[i] = int(cand[where[best]]), code
            counts["near"] += 1
        else:
            for b in range(bands):
                kept_in.setdefault((b, int(bucket[b, p])), []).append(p)
