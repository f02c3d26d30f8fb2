"""Semantic duplicates: embedding cosine >= threshold, blocked search over (memory-mapped) matrices.

Exact, not approximate: every candidate is compared with every record kept before it. Candidates are
visited best first in blocks of `block` rows; a block is compared with the kept records in windows of
`block` rows (one matrix product each) and then with the earlier candidates of its own block. A
candidate that reaches the threshold is a duplicate of the most similar record kept in an earlier block
(ties: the best-placed), else of the most similar one kept earlier in its own block; otherwise it is
kept and its row is appended to the kept matrix.

Memory: one block of candidates, one window of kept rows and two block x block products (about 140 MB
at the default 4096 rows), whatever the corpus size: the embeddings are read from their `RowFile` and
the kept rows written to one (`kept`), never both held in memory. Time grows with candidates x kept
records (the price of exactness); the progress bar shows it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..io.rows import ArrayRows, Rows


def semantic_pass(vectors: Rows, order: Sequence[int], dup: np.ndarray, how: np.ndarray, counts: dict[str, int],
                  threshold: float, block: int, code: int, kept: Rows | None = None,
                  advance: Callable[[int], None] | None = None) -> None:
    """Mark semantic duplicates among `order`'s records not yet marked. `vectors`: L2-normalised rows
    by record; `kept`: scratch rows for the kept records (default: in memory)."""
    live = np.asarray([i for i in order if dup[i] < 0], dtype=np.int64)
    if not len(live):
        return
    kept = kept if kept is not None else ArrayRows.empty(len(live), vectors.width)
    kept_idx = np.empty(len(live), np.int64)
    n_kept = 0
    for start in range(0, len(live), block):
        ids = live[start:start + block]
        x = np.asarray(vectors.gather(ids), dtype=np.float32)
        best_sim = np.full(len(ids), -np.inf, dtype=np.float32)
        best_j = np.full(len(ids), -1, dtype=np.int64)
        rows = np.arange(len(ids))
        for w in range(0, n_kept, block):  # the block vs everything kept so far, one window at a time
            s = x @ np.asarray(kept.read(w, min(n_kept, w + block)), dtype=np.float32).T
            j = s.argmax(axis=1)
            v = s[rows, j]
            better = v > best_sim
            best_sim[better], best_j[better] = v[better], j[better] + w
        inner = x @ x.T  # the block vs its own earlier candidates, in visiting order
        block_kept: list[int] = []
        for a, i in enumerate(ids):
            if best_sim[a] >= threshold:
                dup[i], how[i] = kept_idx[best_j[a]], code
                counts["semantic"] += 1
                continue
            if block_kept:
                sims = inner[a, block_kept]
                b = int(sims.argmax())
                if sims[b] >= threshold:
                    dup[i], how[i] = ids[block_kept[b]], code
                    counts["semantic"] += 1
                    continue
            block_kept.append(a)
        if block_kept:
            at = np.arange(n_kept, n_kept + len(block_kept))
            kept.write(x[block_kept], at)
            kept_idx[at] = ids[block_kept]
            n_kept += len(block_kept)
        if advance is not None:
            advance(len(ids))
