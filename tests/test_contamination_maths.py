"""The decontamination index's hashing, against references written out in plain Python integers: word
values, the splitmix finaliser, 8-byte chunks with holes, window hashes, and the tables an index holds
(which item keeps a shared hash). A change to any of them would silently miss or invent matches."""

from __future__ import annotations

import hashlib

import numpy as np

from dataforge.quality import contamination as C

M = (1 << 64) - 1
P = 0x9E3779B97F4A7C15


def ref_word(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little") | 1


def ref_mix(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
    return (x ^ (x >> 31)) | 1


def ref_chunks(data: bytes, offset: int = 0) -> list[int]:
    b = data[offset:]
    b += b"\0" * (-len(b) % 8)
    out = []
    for k in range(0, len(b), 8):
        piece = b[k:k + 8]
        out.append(0 if 0 in piece else ref_mix(int.from_bytes(piece, "little")))
    return out


def ref_windows(values: list[int], n: int) -> list[tuple[int, int]]:
    """(hash, start) of every hole-free window: the sum of value x P^j over its positions j."""
    return [(sum(v * pow(P, j, 1 << 64) for j, v in enumerate(values[s:s + n])) & M, s)
            for s in range(len(values) - n + 1) if 0 not in values[s:s + n]]


def test_word_values_and_the_finaliser_match_their_definitions():
    for w in ("the", "fox", "ça", "35", ""):
        assert C.word_value(w) == ref_word(w)
    xs = [0, 1, 2, 0xFF, 0x0123456789ABCDEF, M, 1 << 63]
    got = C._mix(np.array(xs, dtype=np.uint64)).tolist()
    assert got == [ref_mix(x) for x in xs]


def test_byte_chunks_are_mixed_little_endian_words_with_holes_at_zero_bytes():
    data = b"abcdefgh" + b"ijkl\0nop" + b"qrstuvwxyz"
    for offset in (0, 1, 3, 7):
        assert C.byte_chunks(data, offset).tolist() == ref_chunks(data, offset)
    assert C.byte_chunks(b"").tolist() == []


def test_window_hashes_are_position_free_sums_of_value_times_powers():
    values = [ref_word(w) for w in "a b c d e f g".split()]
    values[4] = 0  # a hole
    for n in (1, 2, 3):
        h, starts = C.Windows(np.array(values, dtype=np.uint64)).hashes(n)
        assert list(zip(h.tolist(), starts.tolist())) == ref_windows(values, n)
    h, starts = C.window_hashes(np.array(values, dtype=np.uint64), 2, np.array([0, 3, 5, 6]))
    assert starts.tolist() == [0, 5] and h.tolist() == [ref_windows(values, 2)[0][0], ref_windows(values, 2)[-1][0]]
    assert C.Windows(np.array(values[:2], dtype=np.uint64)).hashes(3)[0].tolist() == []


def test_an_index_holds_every_ngram_short_item_and_byte_window_and_the_first_item_keeps_a_shared_hash():
    long_text = "one two three four five six seven"
    short = "alpha beta gamma delta"
    idx = C.BenchmarkIndex.build([("a", [long_text]), ("b", [long_text + " eight"]), ("c", [short]),
                                  ("d", ["too short"])], ngram=5, min_words=4, substring_chars=24)
    assert idx.items == ["a", "b", "c", "d"] and idx.char_window == 2
    words = {w: ref_word(w) for w in (long_text + " eight " + short).split()}  # "too short" adds none
    assert idx.words == words
    # 5-grams: a's three, b's four (three shared with a: a keeps them)
    want: dict[int, int] = {}
    for item, text in ((0, long_text), (1, long_text + " eight")):
        for h, _ in ref_windows([words[w] for w in text.split()], 5):
            want.setdefault(h, item)
    hashes, owner = idx.tables["w5"]
    assert dict(zip(hashes.tolist(), owner.tolist())) == want and hashes.tolist() == sorted(want)
    # a short item matches whole: one 4-word window of its own kind
    (whole, _), = ref_windows([words[w] for w in short.split()], 4)
    assert dict(zip(*(a.tolist() for a in idx.tables["w4"]))) == {whole: 2}
    # byte windows of every text at every offset, the first item keeping a shared one
    data = b"\0".join(t.encode() for t in (long_text, long_text + " eight", short, "too short")) + b"\0"
    ends = np.cumsum([len(t) + 1 for t in (long_text, long_text + " eight", short, "too short")])
    chars: dict[int, int] = {}
    for offset in range(8):
        chunks = ref_chunks(data, offset)
        for h, s in ref_windows(chunks, 2):
            chars.setdefault(h, int(np.searchsorted(ends, s * 8 + offset, side="right")))
    got = dict(zip(*(a.tolist() for a in idx.tables["c"])))
    assert got == chars and idx.tables["c"][0].tolist() == sorted(chars)
    assert set(got.values()) == {0, 1, 2}  # "too short" (9 bytes) holds no 16-byte window


def test_powers_are_p_to_the_i_and_its_inverse_grown_on_demand():
    powers = C._Powers()
    assert powers.fwd.tolist() == [1] and powers.inv.tolist() == [1]
    inv = pow(P, -1, 1 << 64)
    fwd, back = powers.upto(5)
    assert fwd.tolist() == [pow(P, i, 1 << 64) for i in range(5)]
    assert back.tolist() == [pow(inv, i, 1 << 64) for i in range(5)]
    assert len(powers.fwd) == 1 << 20  # grown once to a million, not per call
    big = (1 << 20) + 3
    fwd, back = powers.upto(big)
    assert len(fwd) == big and len(powers.fwd) == 1 << 21
    assert fwd[-1] == pow(P, big - 1, 1 << 64) and back[-1] == pow(inv, big - 1, 1 << 64)
    assert all((int(a) * int(b)) & M == 1 for a, b in zip(fwd[:50], back[:50]))
    assert powers.upto(7)[0].tolist() == [pow(P, i, 1 << 64) for i in range(7)]
