"""Exact, fast ROUGE-L novelty filter (the Self-Instruct "keep if max ROUGE-L F <= 0.7" rule).

Self-Instruct scores every candidate against the whole pool with rouge-score in Python, which is
quadratic and takes hours at 50k instructions. This module makes the *same* keep/drop decisions
(same tokens, same LCS, same float formula, same threshold comparison) while looking at only the
pairs that could possibly exceed the threshold:

* Tokens are exactly rouge-score's default tokeniser without stemming: ``text.lower()``, every run of
  characters outside ``[a-z0-9]`` becomes a separator, empty tokens dropped. Tokens get integer ids.
* A pair (m tokens, n tokens) can only score ``F > t`` if its LCS length L satisfies
  ``2L/(m+n) > t``. Since ``L <= min(m, n)`` and ``L <=`` the multiset token overlap, two exact
  filters follow: a length window, and *prefix filtering* (as in all-pairs similarity joins): order
  every text's token occurrences by a fixed global order (rarest-looking first: newest token id
  first); if two multisets overlap in at least ``a`` elements, their first ``size - a + 1``
  elements must share one. Only prefixes are indexed and probed, so common words rarely cost
  anything. The bound uses ``t - 1e-9`` so float rounding can never make us skip a pair that
  rouge-score would have scored above ``t``.
* Surviving pairs get an exact LCS from rapidfuzz's bit-parallel C implementation on the token-id
  sequences (ids mapped to characters), then rouge-score's own float formula
  ``p = L/len(pred); r = L/len(target); F = 2*p*r/(p+r)`` and the same ``F > t`` comparison.

rouge-score is never imported here; the tests and ``benchmarks/novelty.py`` prove equality with it.
"""

from __future__ import annotations

import re
from operator import itemgetter
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

DEFAULT_THRESHOLD = 0.7
_TOKEN = re.compile(r"[a-z0-9]+")
_SLACK = 1e-9  # float-safety margin for the skip bounds (rouge's formula errs by ~1e-16)
_OCC_SHIFT = 40  # key of the k-th occurrence (k >= 1) of token id i: (k << 40) | i
_MAX_CHAR = 0x110000
_FIRST_REBUILD = 128
_BATCH_MIN = 16
_SMALL_PROBE = 64  # posting hits below which candidate filtering stays in pure Python  # below this many pairs a Python loop beats cdist's setup cost


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation (no stemming): lowercase, maximal runs of [a-z0-9]."""
    return _TOKEN.findall(text.lower())


def fmeasure_from_lcs(lcs: int, target_len: int, prediction_len: int) -> float:
    """rouge-score's `_score_lcs` F-measure, with the very same float operations."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l(target: str, prediction: str) -> float:
    """ROUGE-L F-measure of one pair, equal to ``RougeScorer(["rougeL"]).score(t, p)["rougeL"].fmeasure``."""
    a, b = rouge_tokens(target), rouge_tokens(prediction)
    if not a or not b:
        return 0.0
    return fmeasure_from_lcs(LCSseq.similarity(a, b), len(a), len(b))


class NoveltyResult(NamedTuple):
    """Outcome of one check. `max_score`/`most_similar` are exact for dropped candidates; for kept ones
    they are the best among the pairs that could have crossed the threshold (so <= threshold, 0.0/None
    when no pool text came close)."""

    kept: bool
    max_score: float
    most_similar: str | None


@dataclass
class NoveltyStats:
    """Work counters, to show how much the bounds saved."""

    checks: int = 0
    candidate_pairs: int = 0  # pairs that survived prefix + length filtering
    lcs_computed: int = 0


@dataclass
class _Doc:
    text: str
    seq: str | list[int]
    length: int
    ids: list[int]


class NoveltyIndex:
    """A growing pool of instructions; `add_if_novel` is Self-Instruct's sequential filter step.

    >>> idx = NoveltyIndex(["Give three tips for staying healthy."])
    >>> idx.add_if_novel("Give three tips for staying healthy!").kept
    False
    >>> idx.add_if_novel("Translate the sentence into French.").kept
    True
    """

    def __init__(self, texts: Iterable[str] = (), threshold: float = DEFAULT_THRESHOLD):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ROUGE-L threshold must be within [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self._vocab: dict[str, int] = {}
        self._docs: list[_Doc] = []
        self._postings: dict[int, tuple[list[int], list[int]]] = {}  # key -> (doc ids, positions)
        self._lengths: list[int] = []
        self._len_np = np.zeros(0, dtype=np.int64)  # the same lengths, for vectorised filtering
        self._seqs: list[str | list[int]] = []  # the same sequences, for C-speed gathering
        self._need_arr: dict[int, np.ndarray] = {}
        self._last_keys: list[int] | None = None
        self._alpha_min: list[int] = [0]
        self._window: dict[int, tuple[int, int]] = {}
        self._need: dict[int, list[int]] = {}
        self._max_len = 0
        self._as_chars = True
        # global element order for prefix filtering: rarest tokens first. `_rank[id]` is fixed between
        # rebuilds; a token first seen after the last rebuild ranks before all older ones (-(id+1)).
        self._rank: list[int] = []
        self._df: list[int] = []
        self._next_rebuild = _FIRST_REBUILD
        self.stats = NoveltyStats()
        for text in texts:
            self.add(text)

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self._docs]

    def add(self, text: str) -> None:
        """Add to the pool unconditionally (human seeds)."""
        ids = self._ids(text)
        self._insert(text, ids)

    def check(self, text: str) -> NoveltyResult:
        """Would `text` be kept? Does not change the pool."""
        return self._check(text, self._ids(text))[0]

    def add_if_novel(self, text: str) -> NoveltyResult:
        """Keep `text` (and add it to the pool) iff its max ROUGE-L F against the pool is <= threshold."""
        ids = self._ids(text)
        self._last_keys = None
        result, _ = self._check(text, ids)
        if result.kept:
            self._insert(text, ids, self._last_keys)
        return result

    # ------------------------------------------------------------------ internals

    def _ids(self, text: str) -> list[int]:
        vocab = self._vocab
        out = []
        for tok in rouge_tokens(text):
            i = vocab.get(tok)
            if i is None:
                i = vocab[tok] = len(vocab)
                self._rank.append(-(i + 1))
                self._df.append(0)
                if i >= _MAX_CHAR and self._as_chars:
                    self._to_lists()
            out.append(i)
        return out

    def _seq(self, ids: list[int]) -> str | list[int]:
        return "".join(map(chr, ids)) if self._as_chars else ids

    def _to_lists(self) -> None:
        """More distinct tokens than Unicode code points: fall back to int lists (slower, still exact)."""
        self._as_chars = False
        for d in self._docs:
            if isinstance(d.seq, str):
                d.seq = [ord(c) for c in d.seq]
        self._seqs = [d.seq for d in self._docs]

    def _alpha(self, m: int, n: int) -> int:
        """Least LCS length that could make rouge's float F exceed the threshold for sizes m, n."""
        return int((self.threshold - _SLACK) * (m + n) / 2) + 1

    def _min_alpha(self, n: int) -> int:
        """Smallest overlap any partner of a size-n text needs (its first feasible partner size)."""
        table = self._alpha_min
        while len(table) <= n:
            size = len(table)
            best = size
            for m in range(1, size + 1):
                a = self._alpha(m, size)
                if m >= a:
                    best = a
                    break
            table.append(max(best, 1))
        return table[n]

    def _need_row(self, m: int, hi: int) -> list[int]:
        """alpha(m, n) for n = 0..hi, cached per m (the hot loop indexes it instead of computing)."""
        row = self._need.get(m)
        if row is None or len(row) <= hi:
            row = self._need[m] = [self._alpha(m, n) for n in range(hi + 1)]
        return row

    def _feasible_lengths(self, m: int) -> tuple[int, int]:
        """Partner sizes n for which min(m, n) >= alpha(m, n): an interval."""
        win = self._window.get(m)
        if win is None and self.threshold <= _SLACK:
            win = self._window[m] = (1, 1 << 62)  # threshold 0: any shared token matters, any size
        if win is None:
            lo = m
            while lo > 1 and lo - 1 >= self._alpha(m, lo - 1):
                lo -= 1
            hi = m
            while m >= self._alpha(m, hi + 1):
                hi += 1
            win = self._window[m] = (lo, hi)
        return win

    def _prefix_keys(self, ids: list[int]) -> list[int]:
        """The first `size - min_alpha + 1` token occurrences of a text in the global order, as keys."""
        rank = self._rank
        occurrence: dict[int, int] = {}
        elems = []
        for i in ids:
            k = occurrence.get(i, 0)
            occurrence[i] = k + 1
            elems.append((rank[i], k, i))
        elems.sort()
        size = len(ids) - self._min_alpha(len(ids)) + 1
        return [i if k == 0 else ((k << _OCC_SHIFT) | i) for _, k, i in elems[:size]]

    def _insert(self, text: str, ids: list[int], keys: list[int] | None = None) -> None:
        doc_id = len(self._docs)
        self._docs.append(_Doc(text, self._seq(ids), len(ids), ids))
        self._lengths.append(len(ids))
        self._seqs.append(self._docs[-1].seq)
        if doc_id >= len(self._len_np):
            self._len_np = np.concatenate((self._len_np, np.zeros(max(1024, len(self._len_np)), dtype=np.int64)))
        self._len_np[doc_id] = len(ids)
        self._max_len = max(self._max_len, len(ids))
        df = self._df
        for i in set(ids):
            df[i] += 1
        if len(self._docs) >= self._next_rebuild:
            self._rebuild()
        elif ids:  # no tokens: rouge scores 0 against everything, so it can never cause a drop
            self._index(doc_id, ids, keys)

    def _index(self, doc_id: int, ids: list[int], keys: list[int] | None = None) -> None:
        postings = self._postings
        for pos, key in enumerate(keys if keys is not None else self._prefix_keys(ids)):
            entry = postings.get(key)
            if entry is None:
                postings[key] = ([doc_id], [pos])
            else:
                entry[0].append(doc_id)
                entry[1].append(pos)

    def _rebuild(self) -> None:
        """Re-rank tokens by how many pool texts use them (rare first) and re-index every prefix.
        Any fixed order is exact; a frequency order keeps common words out of prefixes. Done each time
        the pool doubles, so its cost is amortised to O(1) per insert."""
        df = self._df
        order = sorted(range(len(df)), key=lambda i: (df[i], -i))
        rank = self._rank
        for r, i in enumerate(order):
            rank[i] = r
        self._postings = {}
        for doc_id, doc in enumerate(self._docs):
            if doc.ids:
                self._index(doc_id, doc.ids)
        self._next_rebuild = 2 * len(self._docs)

    def _check(self, text: str, ids: list[int]) -> tuple[NoveltyResult, int | None]:
        self.stats.checks += 1
        m = len(ids)
        if not ids or not self._docs:
            return NoveltyResult(True, 0.0, None), None
        lo, hi = self._feasible_lengths(m)
        hi = min(hi, self._max_len)
        docs = self._docs
        lengths = self._lengths
        candidates = self._candidates(ids, m, lo, hi)
        self.stats.candidate_pairs += len(candidates)
        if not candidates:
            return NoveltyResult(True, 0.0, None), None
        seq = self._seq(ids)
        self.stats.lcs_computed += len(candidates)
        if len(candidates) < _BATCH_MIN:
            best, best_doc = 0.0, None
            for d in candidates:
                n = lengths[d]
                # no score_cutoff: rapidfuzz 3.14 can return 0 for a pair whose LCS equals the cutoff
                lcs = LCSseq.similarity(seq, docs[d].seq)
                # target = candidate, prediction = pool text, as Self-Instruct calls scorer.score(inst, pool_item)
                f = fmeasure_from_lcs(lcs, m, n) if lcs else 0.0
                if f > best:
                    best, best_doc = f, d
        else:
            best, best_doc = self._best_batch(seq, m, candidates)
        if best_doc is None:
            return NoveltyResult(True, 0.0, None), None
        return NoveltyResult(not best > self.threshold, best, docs[best_doc].text), best_doc

    def _candidates(self, ids: list[int], m: int, lo: int, hi: int) -> list[int]:
        """Pool texts that share a prefix element with the probe and pass two exact overlap bounds.

        All posting hits are gathered with C-speed list extends, then grouped per text in numpy. For a text
        with first hit at probe/pool positions (i1, j1), last hit (i2, j2) and `c` hits in all:
        overlap <= min(m - i1, n - j1) (nothing shared sits before the first shared element), and
        overlap <= c + min(m - 1 - i2, n - 1 - j2) (every shared element before the last hit lies inside
        both prefixes, so it was counted as a hit). The LCS is at most the overlap."""
        postings = self._postings
        hit_docs: list[int] = []
        hit_pos: list[int] = []
        hit_i: list[int] = []
        keys = self._last_keys = self._prefix_keys(ids)  # reused by _insert when the text is kept
        for i, key in enumerate(keys):
            entry = postings.get(key)
            if entry is not None:
                hit_docs.extend(entry[0])
                hit_pos.extend(entry[1])
                hit_i.extend([i] * len(entry[0]))
        if not hit_docs:
            return []
        if len(hit_docs) <= _SMALL_PROBE:  # few hits: plain Python beats numpy's per-call overhead
            need_row = self._need_row(m, hi)
            lengths = self._lengths
            info: dict[int, list[int]] = {}
            for d, j, i in zip(hit_docs, hit_pos, hit_i):
                e = info.get(d)
                if e is None:
                    info[d] = [i, j, 1, i, j]
                else:
                    e[2] += 1
                    e[3] = i
                    e[4] = j
            out = []
            for d, (i1, j1, c, i2, j2) in info.items():
                n = lengths[d]
                if lo <= n <= hi and min(m - i1, n - j1) >= need_row[n] and c + min(m - 1 - i2, n - 1 - j2) >= need_row[n]:
                    out.append(d)
            out.sort()  # pool order, like the numpy path: ties for the maximum go to the earliest text
            return out
        docs = np.array(hit_docs, dtype=np.int64)
        order = np.argsort(docs, kind="stable")  # stable: within a text, hits stay in probe order
        sorted_docs = docs[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_docs[1:] != sorted_docs[:-1])))
        ends = np.concatenate((starts[1:], [len(sorted_docs)])) - 1
        first, last = order[starts], order[ends]
        uniq = sorted_docs[starts]
        n = self._len_np[uniq]
        inside = (n >= lo) & (n <= hi)
        if not inside.any():
            return []
        uniq, n, first, last = uniq[inside], n[inside], first[inside], last[inside]
        counts = (ends - starts + 1)[inside]
        pos = np.array(hit_pos, dtype=np.int64)
        ivec = np.array(hit_i, dtype=np.int64)
        need = self._need_np(m, hi)[n]
        bound_first = np.minimum(m - ivec[first], n - pos[first])
        bound_last = counts + np.minimum(m - 1 - ivec[last], n - 1 - pos[last])
        keep = (bound_first >= need) & (bound_last >= need)
        return uniq[keep].tolist()

    def _need_np(self, m: int, hi: int) -> np.ndarray:
        arr = self._need_arr.get(m)
        if arr is None or len(arr) <= hi:
            arr = self._need_arr[m] = np.array(self._need_row(m, hi), dtype=np.int64)
        return arr

    def _best_batch(self, seq: str | list[int], m: int, candidates: list[int]) -> tuple[float, int | None]:
        """Many LCS at once in C (rapidfuzz cdist), then rouge's formula elementwise in float64 —
        numpy's IEEE division/multiplication round exactly like Python floats, in the same order."""
        lens = self._len_np[candidates]
        lcs = process.cdist([seq], list(itemgetter(*candidates)(self._seqs)), scorer=LCSseq.similarity,
                            dtype=np.int64, workers=1)[0]
        precision = lcs / lens
        recall = lcs / m
        denom = precision + recall
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
        k = int(np.argmax(f))
        if not f[k] > 0:
            return 0.0, None
        d = candidates[k]
        return fmeasure_from_lcs(int(lcs[k]), m, self._lengths[d]), d


def novel_mask(candidates: Iterable[str], pool: Iterable[str] = (), threshold: float = DEFAULT_THRESHOLD) -> list[bool]:
    """Self-Instruct's sequential filter over `candidates` given an initial `pool`: True = kept."""
    index = NoveltyIndex(pool, threshold)
    return [index.add_if_novel(text).kept for text in candidates]
