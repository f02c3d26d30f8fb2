"""`BalanceState`: what balance keeps per record for its choice, and nothing more.

Why: balance used to hold its whole input (and the gate's side files) in memory. Its choice needs, per
candidate, only its status, quality score, level, topic and seeded tie-break; the topics need the
prompts' embeddings, which go to a `RowFile` on disk. That is about 50 bytes a record in memory, so a
million records are balanced in bounded memory; the output is written in a second pass over the input.
"""

from __future__ import annotations

import shutil
from array import array
from pathlib import Path
from typing import Callable

import numpy as np

from ..io.rows import RowFile
from ..records import STATUSES, Record
from .levels import UNRATED, LevelScheme, level_of

REJECTED = STATUSES.index("rejected")


class BalanceState:
    """Rows of the input's records, then of the upstream files' records (see the module doc)."""

    def __init__(self, work: Path, scheme: LevelScheme, seed: int):
        from .balance import quality_score, tiebreak

        self.work, self.scheme, self.seed = Path(work), scheme, seed
        self._quality, self._tiebreak = quality_score, tiebreak
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.levels = [*scheme.names, UNRATED]
        self.status, self.level = array("b"), array("b")
        self.quality = array("d")
        self.digests = bytearray()  # 32 bytes per input record: the seeded tie-break
        self.topic_names: dict[str, int] = {}  # topics already on the records (reuse_topics)
        self.topic = array("q")
        self.n_input = 0
        self.vectors: RowFile | None = None

    @property
    def n(self) -> int:
        return len(self.status)

    def add(self, r: Record, *, upstream: bool, topic: bool = False) -> None:
        self.status.append(STATUSES.index(r.status))
        self.level.append(self.levels.index(level_of(r, self.scheme)))
        if not upstream:
            self.n_input += 1
            self.quality.append(self._quality(r))
            self.digests += self._tiebreak(self.seed, r.id)
        if topic:
            self.topic.append(self.topic_names.setdefault(r.topic or "", len(self.topic_names)))

    def add_vectors(self, vectors: np.ndarray) -> None:
        if self.vectors is None:
            self.vectors = RowFile(self.work / "embeddings.f32", 0, vectors.shape[1], np.float32)
        self.vectors.append(vectors)

    def duplicate_ids(self) -> int:
        """Input records whose id another input record has (equal ids give equal tie-break digests)."""
        d = np.frombuffer(bytes(self.digests), np.uint8).reshape(-1, 32)
        return self.n_input - len(np.unique(d.view(np.dtype((np.void, 32))).ravel())) if len(d) else 0

    def choose(self, topic: np.ndarray, keys: list[str], plan_of: Callable[[dict], dict]
               ) -> tuple[np.ndarray, dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """Keep the best of each (topic, level) cell, as many as `plan_of(candidates per cell)` allows.

        `topic`: topic index per input record, `keys` its names. Within a cell: higher quality first,
        then the seeded tie-break, then input position. Returns (kept mask over the input, candidates
        per cell, the plan), cells named (topic key, level)."""
        n, width = self.n_input, len(self.levels)
        status = np.frombuffer(self.status, np.int8)[:n]
        level = np.frombuffer(self.level, np.int8)[:n].astype(np.int64)
        quality = np.frombuffer(self.quality, np.float64)
        cand = np.flatnonzero(status != REJECTED)
        cell = topic[cand] * width + level[cand]
        tb = np.frombuffer(bytes(self.digests), ">u8").reshape(-1, 4)[cand]
        srt = np.lexsort((cand, tb[:, 3], tb[:, 2], tb[:, 1], tb[:, 0], -quality[cand], cell))
        cand, cell = cand[srt], cell[srt]
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]]) if len(cell) else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, len(cell)])
        names = [(keys[int(c) // width], self.levels[int(c) % width]) for c in cell[starts]]
        avail = {name: int(k) for name, k in zip(names, sizes)}
        plan = plan_of(avail)
        keep = np.zeros(n, bool)
        for s, name in zip(starts, names):
            keep[cand[s:s + plan.get(name, 0)]] = True
        return keep, avail, plan
