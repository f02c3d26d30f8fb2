"""`dataforge convert | stats | validate` end to end, in process through the real entry point
(`dataforge.cli.main`, so exit codes and error printing are the user's) and once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO, TEST_DATA, needs_shared
from dataforge.cli import main
from dataforge.io import read_records

SEEDS = EXAMPLES / "seeds.jsonl"
MIXED = TEST_DATA / "mixed_bad.jsonl"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI like a shell would: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def run_json(argv: list[str], capsys) -> tuple[int, dict]:
    code, out, err = run([*argv, "--json"], capsys)
    assert out.strip(), err
    return code, json.loads(out)


@pytest.mark.parametrize("command, flags", [
    ("convert", ["--output", "--format", "--to", "--strict", "--shard", "--json"]),
    ("stats", ["--format", "--strict", "--json", "--top"]),
    ("validate", ["--format", "--strict", "--rejects", "--show", "--json"]),
])
def test_help_lists_the_options(command, flags, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    for flag in flags:
        assert flag in out


def test_convert_writes_output_rejects_and_summary(tmp_path, capsys):
    out = tmp_path / "clean.jsonl"
    code, summary = run_json(["convert", str(MIXED), "-o", str(out)], capsys)
    assert code == 0
    assert summary["records_in"] == summary["records_out"] == 3
    assert summary["items_in"] == 7 and summary["bad"] == 4
    assert summary["bad_by_reason"] == {"not JSON": 2, "invalid": 1, "not UTF-8": 1}
    assert summary["wall_s"] > 0 and summary["records_per_s"] > 0
    rejects = Path(summary["rejects"])
    assert rejects == Path(f"{out}.bad-lines.jsonl")
    assert [json.loads(x)["line"] for x in rejects.read_text(encoding="utf-8").splitlines()] == [2, 3, 6, 7]
    assert [r.output for r in read_records(out)] == ["tac", "5", "Hello."]


def test_convert_prints_a_readable_summary_table(tmp_path, capsys):
    code, out, _ = run(["convert", str(SEEDS), "-o", str(tmp_path / "s.jsonl")], capsys)
    assert code == 0
    for words in ("records_in", "records_out", "wall_s", "records_per_s", "25"):
        assert words in out


def test_convert_shows_a_progress_bar_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DATAFORGE_PROGRESS", "1")
    code, _, err = run(["convert", str(SEEDS), "-o", str(tmp_path / "s.jsonl")], capsys)
    assert code == 0
    assert "convert" in err and "25/25" in err and "item/s" in err


def test_convert_strict_stops_with_file_and_line(tmp_path, capsys):
    out = tmp_path / "clean.jsonl"
    code, stdout, err = run(["convert", str(MIXED), "-o", str(out), "--strict"], capsys)
    assert code == 2
    assert f"{MIXED}:2: not JSON" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no output, no partial file, no rejects


def test_convert_errors_are_clear(tmp_path, capsys):
    code, _, err = run(["convert", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "missing.jsonl: no such file" in err
    code, _, err = run(["convert", str(SEEDS), "-o", str(tmp_path / "o.jsonl"), "--to", "csv"], capsys)
    assert code == 2 and "'csv' is not one of" in err and "--to" in err
    code, _, err = run(["convert", str(SEEDS), "-o", str(tmp_path / "o.jsonl"), "--shard", "3/2"], capsys)
    assert code == 2 and "--shard" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_convert_to_chat_and_parquet_by_suffix(tmp_path, capsys):
    chat = tmp_path / "chat.jsonl"
    assert run_json(["convert", str(SEEDS), "-o", str(chat), "--to", "chat"], capsys)[0] == 0
    rows = [json.loads(x) for x in chat.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 25 and all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    pq_out = tmp_path / "seeds.parquet"
    code, summary = run_json(["convert", str(chat), "-o", str(pq_out)], capsys)
    assert code == 0 and summary["out_format"] == "parquet" and summary["in_format"] == "chat"
    code, summary = run_json(["convert", str(pq_out), "-o", str(tmp_path / "a.jsonl"), "--to", "alpaca"], capsys)
    assert code == 0 and summary["records_out"] == 25
    first = json.loads((tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"instruction", "input", "output"}


def test_convert_shards_partition_the_records(tmp_path, capsys):
    ids = []
    for i in (1, 2, 3):
        out = tmp_path / f"part{i}.jsonl"
        code, summary = run_json(["convert", str(SEEDS), "-o", str(out), "--shard", f"{i}/3"], capsys)
        assert code == 0 and summary["records_in"] == 25
        ids.append([r.id for r in read_records(out)] if summary["records_out"] else [])
    flat = [x for part in ids for x in part]
    assert sorted(flat) == sorted(r.id for r in read_records(SEEDS)) and len(set(flat)) == 25
    assert all(len(part) < 25 for part in ids)  # really split, not copied


def test_stats_json_counts_and_lengths(capsys):
    code, s = run_json(["stats", str(SEEDS)], capsys)
    assert code == 0
    records = list(read_records(SEEDS))
    assert s["records"] == 25 and s["format"] == "selfinstruct" and s["bad"] == 0
    assert s["by_task"] == {"generation": 20, "classification": 5}
    assert s["by_status"] == {"pending": 25} and s["by_generator"] == {"seed": 25}
    assert s["by_source"] == {"(none)": 25}
    for field in ("instruction", "input", "output"):
        lengths = sorted(len(getattr(r, field)) for r in records)
        dist = s["length_chars"][field]
        assert dist["min"] == lengths[0] and dist["max"] == lengths[-1]
        assert dist["mean"] == round(sum(lengths) / len(lengths), 1)
        assert dist["p50"] in lengths
        assert dist["min"] <= dist["p10"] <= dist["p25"] <= dist["p50"] <= dist["p75"] <= dist["p90"] <= dist["p99"] <= dist["max"]
        assert s["empty"][field] == lengths.count(0)


def test_stats_tables_and_bad_lines(capsys):
    code, out, _ = run(["stats", str(MIXED)], capsys)
    assert code == 0
    flat = " ".join(out.split())  # rich wraps at the terminal width, which depends on the path's length
    for words in ("by status", "by task", "by meta.source", "length in characters", "4 bad", "not JSON: 2"):
        assert words in flat


def test_validate_exit_codes(tmp_path, capsys):
    code, out, _ = run(["validate", str(SEEDS)], capsys)
    assert code == 0 and "ok" in out
    rejects = tmp_path / "bad.jsonl"
    code, out, _ = run(["validate", str(MIXED), "--rejects", str(rejects)], capsys)
    assert code == 1
    for line, reason in ((2, "not JSON"), (3, "invalid"), (6, "not JSON"), (7, "not UTF-8")):
        assert f"{MIXED}:{line}: {reason}" in out
    assert len(rejects.read_text(encoding="utf-8").splitlines()) == 4
    code, out, _ = run(["validate", str(MIXED), "--show", "1"], capsys)
    assert code == 1 and "and 3 more bad items" in out
    code, _, err = run(["validate", str(MIXED), "--strict"], capsys)
    assert code == 2 and f"{MIXED}:2:" in err


def test_entry_point_prints_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dataforge", "validate", str(tmp_path / "none.jsonl")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "no such file" in proc.stderr and "Traceback" not in proc.stderr


@needs_shared
def test_convert_and_stats_on_the_shared_corpus(shared_data, tmp_path, capsys):
    out = tmp_path / "corpus.jsonl"
    code, summary = run_json(["convert", str(shared_data / "instruct_corpus_shared.jsonl"), "-o", str(out)], capsys)
    assert code == 0 and summary["records_out"] == 24940 and summary["bad"] == 0
    code, s = run_json(["stats", str(out)], capsys)
    # the per-source counts and empty outputs documented in shared/data/SOURCES.md
    assert s["by_source"] == {"gpteacher/toolformer": 7673, "gsm8k/train": 7473, "gpteacher/codegen": 4535,
                              "code_alpaca_2k": 2017, "gpteacher/roleplay": 1923, "gsm8k/test": 1319}
    assert s["empty"]["output"] == 2 and s["length_chars"]["instruction"]["max"] <= 985
