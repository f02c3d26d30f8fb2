"""Decontamination: the normalisation, the n-gram and substring matches against hand-made items, the
stage and `filter --decontaminate` end to end, the index cache, and (on the shared corpus) planted GSM8K
test items found among clean records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_shared

from dataforge.errors import DataforgeError
from dataforge.io import read_records
from dataforge.quality.contamination import BenchmarkIndex, Windows, normalise
from dataforge.quality.decontaminate import DecontaminateConfig, run_decontaminate

ITEM = "The quick brown fox jumps over the lazy dog near the old river bank today, said Ann."
FORMULA = "result=((alpha*beta)+(gamma/delta))**2-sqrt(epsilon*zeta)+log(eta+theta)-exp(iota*kappa)%lambda_+mu;"
CODE = "x = [i ** 2 for i in range(10)]; y = {k: v for k, v in zip(x, x[1:])}; print(sum(y.values()) // 3, max(x))"


def test_normalise_lowercases_drops_punctuation_and_splits_on_whitespace():
    assert normalise("Hello, World!  It's 3.5 -- ok_go\n(yes)") == ["hello", "world", "its", "35", "ok_go", "yes"]
    assert normalise("Ça, c'est «très» bien!") == ["ça", "cest", "très", "bien"]  # the non-ASCII path agrees


def test_window_hash_depends_on_the_window_not_its_position():
    vals = np.array([5, 7, 11, 13, 17, 19], dtype=np.uint64)
    shifted = np.concatenate((np.array([3, 2], dtype=np.uint64), vals))
    h1, s1 = Windows(vals).hashes(3)
    h2, s2 = Windows(shifted).hashes(3)
    assert list(h1) == list(h2[2:]) and list(s2[2:]) == [2, 3, 4, 5]
    assert len(set(h1.tolist())) == 4  # different windows, different hashes
    h3, s3 = Windows(np.array([5, 7, 0, 11, 13, 17], dtype=np.uint64)).hashes(3)  # 0 is a hole
    assert list(s3) == [3] and h3[0] == Windows(np.array([11, 13, 17], dtype=np.uint64)).hashes(3)[0][0]


def _index(**kw) -> BenchmarkIndex:
    return BenchmarkIndex.build([("fox", [ITEM]), ("code", [CODE]), ("short", ["nine words here in one short item for you"]),
                                 ("tiny", ["too short to count"])], **kw)


def test_a_shared_13_gram_is_a_hit_and_12_words_are_not():
    m = _index(substring_chars=0).matcher()
    words = normalise(ITEM)
    thirteen = "Well, " + " ".join(w.upper() for w in words[2:15]) + "!"  # case and punctuation do not matter
    twelve = "Well, " + " ".join(words[2:14]) + " and more"
    hits = m.check([[thirteen], ["unrelated", twelve], [twelve, "x"]])
    assert hits[0] is not None and hits[0].item == "fox" and hits[0].by == "ngram"
    assert hits[0].match == " ".join(words[2:15])
    assert hits[1] is None and hits[2] is None
    assert m.check([[" ".join(words[2:10]), " ".join(words[10:16])]])[0] is None  # no n-gram spans two texts
    hit = _index(ngram=8, substring_chars=0).matcher().check([[twelve]])[0]
    assert hit is not None and len(hit.match.split()) == 8  # --ngram 8


def test_a_batch_is_normalised_at_once_and_a_text_holding_the_separator_word_changes_nothing():
    """The texts of a batch are normalised as one string with a separator word between them; a text that
    holds that very word is looked up text by text, with the same hits."""
    from dataforge.quality.contamination import _SEP_WORD

    m = _index(substring_chars=0).matcher()
    words = normalise(ITEM)
    tail = " ".join(words[1:14])  # the hit: 13 words
    batch = [["Clean one.", ""], ["", "Some " + tail], ["other words", "nine words here in one short item for you"],
             ["no"]]
    sneaky = [["Clean one.", f"{_SEP_WORD.upper()} is a word"], *batch[1:]]
    for texts in (batch, sneaky):
        hits = m.check(texts)
        assert hits[0] is None and hits[3] is None
        assert (hits[1].item, hits[1].by, hits[1].match) == ("fox", "ngram", tail)
        assert (hits[2].item, hits[2].match) == ("short", "nine words here in one short item for you")
    # across the separator no window forms: the end of one text and the start of the next are not a 13-gram
    split = [[" ".join(words[:7])], [" ".join(words[7:14])]]
    assert m.check(split) == [None, None]
    assert m.check([[" ".join(words[:7]) + f" {_SEP_WORD} " + " ".join(words[7:14])]]) == [None]


def test_a_short_item_matches_whole_and_a_shorter_one_not_at_all():
    m = _index(substring_chars=0).matcher()
    hits = m.check([["So: Nine words here in ONE short item, for you."], ["nine words here in one short item for"],
                    ["it is too short to count"]])
    assert hits[0] is not None and hits[0].item == "short"
    assert hits[1] is None and hits[2] is None


def test_a_long_verbatim_run_of_characters_is_a_hit_whatever_its_alignment():
    idx = _index(ngram=40, substring_chars=60)  # no 40-gram anywhere: only the substring check can fire
    m = idx.matcher()
    for start in range(0, len(CODE) - 60):
        for pad in range(8):  # every alignment of the run in the record
            hit = m.check([["p" * pad + " " + CODE[start:start + 60] + " end"]])[0]
            assert hit is not None and hit.item == "code" and hit.by == "substring", (start, pad)
            assert hit.match in CODE
    window = idx.char_window * 8
    short = [m.check([["zz " + CODE[s:s + window - 1] + "@"]])[0] for s in range(0, len(CODE) - window)]
    assert all(h is None for h in short)  # shorter than one window: never


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_stage_rejects_with_reasons_and_reuses_the_cached_index(tmp_path):
    bench = _write(tmp_path / "bench.jsonl", [{"id": "q1", "instruction": ITEM, "output": "42"},
                                              {"id": "q2", "instruction": "Explain " + FORMULA, "output": "it prints"}])
    txt = tmp_path / "items.txt"
    txt.write_text("\nfirst line item with enough words to be counted as one\ntwelve plain words of a benchmark "
                   "question nobody should train on ever\n", encoding="utf-8")
    data = _write(tmp_path / "data.jsonl", [
        {"instruction": "Tell a story.", "output": ITEM.upper()},
        {"instruction": "Twelve plain words of a benchmark question nobody should train on ever!", "output": "no"},
        {"instruction": "Write code.", "output": "Here: " + FORMULA[2:]},  # one word once normalised
        {"instruction": "A clean one about the fox and the dog.", "output": "Quick brown dogs."},
    ])
    cfg = DecontaminateConfig(benchmarks=[str(bench), str(txt)])
    s = run_decontaminate(data, tmp_path / "out.jsonl", cfg, progress=False)
    assert s.out == {"pending": 1, "rejected": 3}
    rejected = {r.instruction: r for r in read_records(tmp_path / "out.jsonl.rejected.jsonl")}
    assert rejected["Tell a story."].reasons == ["contaminated:bench.jsonl:q1"]
    assert rejected["Tell a story."].meta["contamination"]["by"] == "ngram"
    assert rejected["Write code."].reasons == ["contaminated:bench.jsonl:q2"]
    assert rejected["Write code."].meta["contamination"]["by"] == "substring"
    key = "Twelve plain words of a benchmark question nobody should train on ever!"
    assert rejected[key].reasons == ["contaminated:items.txt:3"]  # plain text: the line number
    assert [r.instruction for r in read_records(tmp_path / "out.jsonl")] == ["A clean one about the fox and the dog."]
    d = s.details
    assert d["benchmarks"] == {"bench.jsonl": 2, "items.txt": 2} and d["contaminated"] == 3
    assert d["contaminated_by_benchmark"] == {"bench.jsonl": 2, "items.txt": 1} and not d["index_from_cache"]

    again = run_decontaminate(data, tmp_path / "out2.jsonl", cfg, progress=False)
    assert again.details["index_from_cache"] and again.out == s.out
    # the cache is keyed by content: an edited benchmark is indexed again and its new item is found
    txt.write_text("a clean one about the fox and the dog\n", encoding="utf-8")
    third = run_decontaminate(data, tmp_path / "out3.jsonl", cfg, progress=False)
    assert not third.details["index_from_cache"] and third.details["contaminated_by_benchmark"]["items.txt"] == 1


def test_bad_benchmark_lines_and_missing_files_are_errors(tmp_path):
    data = _write(tmp_path / "data.jsonl", [{"instruction": "x", "output": "y"}])
    bad = tmp_path / "bench.jsonl"
    bad.write_text('{"instruction": "ok", "output": "fine"}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataforgeError, match=r"bench.jsonl:2: not JSON"):
        run_decontaminate(data, tmp_path / "o.jsonl", DecontaminateConfig(benchmarks=[str(bad)]), progress=False)
    with pytest.raises(DataforgeError, match="no such benchmark file"):
        run_decontaminate(data, tmp_path / "o.jsonl", DecontaminateConfig(benchmarks=[str(tmp_path / "nope.txt")]),
                          progress=False)
    with pytest.raises(DataforgeError, match="name the benchmark files"):
        run_decontaminate(data, tmp_path / "o.jsonl", DecontaminateConfig(), progress=False)


def test_filter_decontaminate_rejects_before_the_gate(tmp_path):
    from dataforge.cli import main

    bench = _write(tmp_path / "bench.jsonl", [{"instruction": ITEM, "output": "An answer of enough words to be an item."}])
    data = _write(tmp_path / "data.jsonl", [
        {"instruction": "Summarise the sentence.", "output": ITEM},
        {"instruction": "Name three fruits that grow in cold climates.", "output": "Apples, pears and cherries."},
    ])
    with pytest.raises(SystemExit) as exit_:
        main(["filter", str(data), "-o", str(tmp_path / "clean.jsonl"), "--no-llm", "--no-reference",
              "--decontaminate", str(bench), "--json"])
    assert exit_.value.code == 0
    rejected = list(read_records(tmp_path / "clean.jsonl.rejected.jsonl"))
    assert [r.instruction for r in rejected] == ["Summarise the sentence."]
    assert rejected[0].reasons[0].startswith("contaminated:bench.jsonl:") and not rejected[0].scores  # never scored


@needs_shared
def test_planted_gsm8k_items_are_found_and_clean_records_left_alone(shared_data, tmp_path):
    """The issue's must-show, at full size: 50 GSM8K test items (25 verbatim, 25 with a word changed
    every ~20 words) among 5,000 records from the rest of the corpus."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from decontamination import detection

    rows = [json.loads(line) for line in open(shared_data / "instruct_corpus_shared.jsonl", encoding="utf-8")]
    d = detection(rows, tmp_path)
    assert d["flagged"] >= 0.98 * d["planted"] and d["verbatim_flagged"] == 25
    assert d["false_flags"] < 0.005 * d["clean"]
