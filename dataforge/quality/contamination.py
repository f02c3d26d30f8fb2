"""Benchmark contamination: which records restate an item of a benchmark.

The method is the one GPT-3 (appendix C) and NeMo Curator's task decontamination use: text is
normalised (lowercased, punctuation removed, split on whitespace) and a record is contaminated when one
of its word n-grams (13 by default) is also an n-gram of a benchmark item. An item shorter than n words
matches as a whole, if it has at least `min_words`. Normalisation hides what lives in punctuation (code,
formulas, tables), so a run of `substring_chars` characters copied verbatim from an item (whitespace
runs collapsed) is also a hit.

Why numpy and hashes: the benchmark side is hashed once into sorted uint64 arrays (`BenchmarkIndex`,
cached on disk by `index_for`, keyed by the file's content and these settings); records only look up.
A batch of records becomes one array of word values (0 for a word no item has, which no n-gram can
contain) and one of 8-byte chunks (items are chunked at all 8 offsets, records at one, so the record
side does an eighth of the work); every window's hash comes from a prefix sum of value x P^position
(wrapping mod 2^64) times P^-start, so one batch is hashed in a handful of vector operations, whatever
n is. A bitmap answers most "not in the index" questions before a binary search. 64-bit hashes make a
false hit from a collision vanishingly rare (about 1e-7 per million records against a 10k-item index).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from itertools import repeat
from typing import Iterable, Sequence

import numpy as np

_P = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
_PUNCT = re.compile(r"[^\w\s]+")
_BITMAP_BITS = 25  # 32 MiB of booleans: a quick "certainly absent" before the binary search
_CHUNK = 8  # bytes per value of the substring check: records are probed at every 8th byte
FORMAT = 2  # of the cached index; bump when hashing changes
_SEP_WORD = "qzxdataforgesepqzx"  # between the texts of a batch, normalised together (see Matcher._values)
_SEPARATOR, _SEP_VALUE = f" {_SEP_WORD} ", 2


# the same deletion as _PUNCT for ASCII text, by str.translate (several times faster than the regex)
_ASCII_PUNCT = {c: None for c in range(128) if _PUNCT.match(chr(c))}


def normalise(text: str) -> list[str]:
    """Lowercase, punctuation removed, whitespace tokens (the GPT-3 / NeMo Curator normalisation)."""
    low = text.lower()
    return (low.translate(_ASCII_PUNCT) if low.isascii() else _PUNCT.sub("", low)).split()


def collapse(text: str) -> str:
    """Whitespace runs as one space: what the exact-substring check compares."""
    return " ".join(text.split())


def word_value(word: str) -> int:
    """A word's stable 64-bit value (never 0, which marks a word no item has)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little") | 1


_LOW = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads 8 text bytes over all 64 bits (odd, so never 0)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) | np.uint64(1)


def byte_chunks(data: bytes, offset: int = 0) -> np.ndarray:
    """`data[offset:]` as one value per 8 bytes; a chunk holding a 0 byte (the separator between texts,
    or the padding at the end) is a hole."""
    b = data[offset:]
    raw = np.frombuffer(b + b"\0" * (-len(b) % 8), dtype="<u8")
    with np.errstate(over="ignore"):
        has_zero = ((raw - _LOW) & ~raw & _HIGH) != 0
    values = _mix(raw)
    values[has_zero] = 0
    return values


class _Powers:
    """P^i and P^-i mod 2^64 for i < n, grown on demand (shared by every window hash)."""

    def __init__(self) -> None:
        self.fwd = self.inv = np.ones(1, dtype=np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.fwd) < n:
            size = max(n, 2 * len(self.fwd), 1 << 20)
            self.fwd, self.inv = np.ones(size, np.uint64), np.ones(size, np.uint64)
            with np.errstate(over="ignore"):
                np.cumprod(np.full(size - 1, _P, dtype=np.uint64), out=self.fwd[1:])
                np.cumprod(np.full(size - 1, _P_INV, dtype=np.uint64), out=self.inv[1:])
        return self.fwd[:n], self.inv[:n]


_POWERS = _Powers()


class Windows:
    """Hashes of the windows of one sequence of values (0 = a hole no window may contain).

    A window's hash depends on its values and their order only, not on where it starts, so a window of a
    record and the same window of an item hash alike."""

    def __init__(self, values: np.ndarray):
        n = len(values)
        fwd, self._inv = _POWERS.upto(n + 1)
        self._prefix = np.zeros(n + 1, np.uint64)
        self._holes = np.zeros(n + 1, np.int64)
        with np.errstate(over="ignore"):
            np.cumsum(values * fwd[:n], out=self._prefix[1:])
        np.cumsum(values == 0, out=self._holes[1:])

    def hashes(self, n: int, starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(hash, start) of every length-`n` window without a hole (or of those starting at `starts`)."""
        m = len(self._prefix) - n
        if m <= 0:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        idx = np.arange(m) if starts is None else starts[starts < m]
        idx = idx[self._holes[idx + n] == self._holes[idx]]
        with np.errstate(over="ignore"):
            return (self._prefix[idx + n] - self._prefix[idx]) * self._inv[idx], idx


def window_hashes(values: np.ndarray, n: int, starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`Windows(values).hashes(n, starts)`."""
    return Windows(values).hashes(n, starts)


def _table(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique hashes, the item of each): where items share a hash, the first item keeps it."""
    hashes = np.concatenate([h for h, _ in parts])
    owner = np.concatenate([o for _, o in parts])
    order = np.argsort(hashes, kind="stable")
    hashes, owner = hashes[order], owner[order]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]
    return hashes[first], owner[first]


@dataclass
class BenchmarkIndex:
    """Hashes of a benchmark's word n-grams and character windows, each with the item it came from."""

    ngram: int
    min_words: int
    substring_chars: int
    items: list[str] = field(default_factory=list)  # item ids, by index
    words: dict[str, int] = field(default_factory=dict)  # every word some item has -> its value
    tables: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # kind -> (sorted hashes, item)

    @property
    def char_window(self) -> int:
        """8-byte chunks per window. Records are cut into chunks at every 8th byte and items at every
        byte offset, so a shared run of `substring_chars` bytes always holds a whole record window."""
        return max(1, (self.substring_chars - _CHUNK + 1) // _CHUNK)

    @classmethod
    def build(cls, items: Iterable[tuple[str, Sequence[str]]], *, ngram: int = 13, min_words: int = 8,
              substring_chars: int = 100, batch: int = 2000) -> "BenchmarkIndex":
        """From (item id, its texts) pairs: every n-gram (or whole short item) and every byte window."""
        idx = cls(ngram, min_words, substring_chars)
        found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        texts: list[tuple[int, str]] = []  # (item, collapsed text)
        for k, (item_id, item_texts) in enumerate(items):
            idx.items.append(item_id)
            texts += [(k, collapse(t)) for t in item_texts]
            if len(texts) >= batch:
                idx._add(texts, found)
                texts = []
        idx._add(texts, found)
        idx.tables = {kind: _table(parts) for kind, parts in found.items()}
        return idx

    def _add(self, texts: list[tuple[int, str]], found: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> None:
        """Hash a batch of item texts, all at once: long texts' n-grams, short ones whole, byte windows."""
        if not texts:
            return
        values: list[int] = []
        owner: list[int] = []
        for k, text in texts:
            toks = normalise(text)
            if len(toks) >= self.ngram:
                values += [self.words.setdefault(w, word_value(w)) for w in toks]
                values.append(0)
                owner += [k] * (len(toks) + 1)
            elif len(toks) >= self.min_words:  # a short item matches as a whole
                vals = np.array([self.words.setdefault(w, word_value(w)) for w in toks], dtype=np.uint64)
                h, _ = window_hashes(vals, len(toks))
                found.setdefault(f"w{len(toks)}", []).append((h, np.array([k], np.int32)))
        if values:
            h, at = window_hashes(np.array(values, dtype=np.uint64), self.ngram)
            found.setdefault(f"w{self.ngram}", []).append((h, np.array(owner, np.int32)[at]))
        if self.substring_chars:
            chunks = [t.encode("utf-8").replace(b"\0", b" ") for _, t in texts]
            ends = np.cumsum([len(c) + 1 for c in chunks])
            data = b"\0".join(chunks) + b"\0"
            items = np.array([k for k, _ in texts], np.int32)
            for offset in range(_CHUNK):  # items at every byte offset, so any record alignment meets them
                h, at = window_hashes(byte_chunks(data, offset), self.char_window)
                found.setdefault("c", []).append((h, items[np.searchsorted(ends, at * _CHUNK + offset, side="right")]))

    @classmethod
    def merge(cls, parts: Sequence["BenchmarkIndex"], prefixes: Sequence[str]) -> "BenchmarkIndex":
        """One index over several benchmarks; item ids become ``<prefix>:<id>``."""
        first = parts[0]
        out = cls(first.ngram, first.min_words, first.substring_chars)
        kinds: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for part, prefix in zip(parts, prefixes):
            offset = len(out.items)
            out.items += [f"{prefix}:{i}" for i in part.items]
            out.words.update(part.words)
            for kind, (h, o) in part.tables.items():
                kinds.setdefault(kind, []).append((h, o + offset))
        out.tables = {kind: _table(arrays) for kind, arrays in kinds.items()}
        return out

    def matcher(self) -> "Matcher":
        return Matcher(self)


@dataclass(frozen=True)
class Hit:
    """Why a text is contaminated: the item, how (``ngram`` or ``substring``) and the shared text."""

    item: str
    by: str
    match: str


class Matcher:
    """Looks a batch of texts up in an index; `check` gives the first hit of each text (or None)."""

    def __init__(self, index: BenchmarkIndex):
        self.index = index
        self.bitmap = np.zeros(1 << _BITMAP_BITS, dtype=bool)
        for hashes, _ in index.tables.values():
            self.bitmap[hashes >> np.uint64(64 - _BITMAP_BITS)] = True
        self.word_tables = sorted((int(k[1:]), v) for k, v in index.tables.items() if k.startswith("w"))
        self._value = {**index.words, _SEP_WORD: _SEP_VALUE}.get  # the separator's value is even: no word's

    def _lookup(self, kind_table: tuple[np.ndarray, np.ndarray], hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions into `hashes` that are in the table, the item of each)."""
        maybe = np.flatnonzero(self.bitmap[hashes >> np.uint64(64 - _BITMAP_BITS)])
        table, owner = kind_table
        if not len(maybe) or not len(table):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        h = hashes[maybe]
        pos = np.minimum(np.searchsorted(table, h), len(table) - 1)
        found = table[pos] == h
        return maybe[found], owner[pos[found]]

    def check(self, texts: Sequence[Sequence[str]]) -> list[Hit | None]:
        """For each unit (the texts of one record: prompt, response, ...), its first hit or None."""
        hits: list[Hit | None] = [None] * len(texts)
        flat = [collapse(t) for unit in texts for t in unit]
        unit_of = [u for u, unit in enumerate(texts) for _ in unit]
        if self.word_tables:
            self._words(flat, unit_of, hits)
        if "c" in self.index.tables:
            self._chars(flat, unit_of, hits)
        return hits

    def _values(self, flat: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(the word values of all texts, a hole after each; where each text starts). The texts are
        normalised as one string with a separator word between them (one pass in C, not one per text);
        should a text hold that very word, text by text instead."""
        words = normalise(_SEPARATOR.join(flat))
        values = np.fromiter(map(self._value, words, repeat(0)), dtype=np.uint64, count=len(words))
        seps = np.flatnonzero(values == _SEP_VALUE)
        if len(seps) == len(flat) - 1:
            values[seps] = 0
            return np.append(values, np.uint64(0)), np.concatenate(([0], seps + 1))
        get, every, starts = self.index.words.get, [], []
        for text in flat:
            starts.append(len(every))
            every += map(get, normalise(text), repeat(0))
            every.append(0)  # a hole: no window spans two texts
        return np.array(every, dtype=np.uint64), np.array(starts, dtype=np.int64)

    def _words(self, flat: list[str], unit_of: list[int], hits: list[Hit | None]) -> None:
        values, starts = self._values(flat)
        windows = Windows(values)
        bounds = starts[1:]
        for n, table in self.word_tables:
            h, where = windows.hashes(n)
            found, items = self._lookup(table, h)
            for pos, item in zip(where[found].tolist(), items.tolist()):
                t = int(np.searchsorted(bounds, pos, side="right"))
                if hits[unit_of[t]] is None:
                    at = pos - starts[t]
                    hits[unit_of[t]] = Hit(self.index.items[item], "ngram", " ".join(normalise(flat[t])[at:at + n]))

    def _chars(self, flat: list[str], unit_of: list[int], hits: list[Hit | None]) -> None:
        chunks = [t.encode("utf-8").replace(b"\0", b" ") for t in flat]
        ends = np.cumsum([len(c) + 1 for c in chunks])  # each text is followed by a b"\0" hole
        data = b"\0".join(chunks) + b"\0"
        w = self.index.char_window
        h, where = window_hashes(byte_chunks(data), w)
        found, items = self._lookup(self.index.tables["c"], h)
        where = where[found] * _CHUNK  # byte positions
        for pos, t, item in zip(where.tolist(), np.searchsorted(ends, where, side="right").tolist(), items.tolist()):
            if hits[unit_of[t]] is None:
                text = data[pos:pos + w * _CHUNK].decode("utf-8", "replace")
                hits[unit_of[t]] = Hit(self.index.items[item], "substring", text)
