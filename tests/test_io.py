"""Streaming I/O on real files: every input format -> Record -> every output format, rejects, atomic
writes, the crash-repairing Journal, and clear errors for missing, empty and broken input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import EXAMPLES, TEST_DATA, needs_shared
from dataforge.errors import DataforgeError
from dataforge.io import (Journal, ReadStats, RecordWriter, RejectSink, count_items, detect_format, read_records,
                          repair_tail, write_json_atomic, write_records)
from dataforge.records import Record

SEEDS = EXAMPLES / "seeds.jsonl"
SHAREGPT = [
    {"id": "sg-1", "conversations": [{"from": "human", "value": "What is the boiling point of water at sea level?"},
                                     {"from": "gpt", "value": "100 °C (212 °F)."}]},
    {"id": "sg-2", "source": "made-up", "conversations": [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "List two prime numbers."},
        {"from": "gpt", "value": "2, 3"},
        {"from": "human", "value": "Two more?"},
        {"from": "gpt", "value": "5, 7"}]},
    {"conversations": [{"from": "human", "value": "Write \"hi\" in Japanese.\nJust the word."},
                       {"from": "gpt", "value": "こんにちは"}]},
]
TABLE = {  # an outside Parquet / HF dataset: plain text columns plus one foreign column
    "instruction": ["Reverse the list.", "Name a colour.", "Summarise the text."],
    "input": ["[1, 2, 3]", "", "Cats sleep a lot. They also purr."],
    "output": ["[3, 2, 1]", "Teal", "Cats sleep and purr."],
    "source": ["table", "table", "table"],
}


def triples(records):
    return [(r.instruction, r.input, r.output) for r in records]


def expected_seed_triples(path: Path):
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        out += [(task["instruction"], inst["input"], inst["output"]) for inst in task["instances"]]
    return out


# --------------------------------------------------------------------------- input builders


def make_input(kind: str, tmp: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    """(path, the (instruction, input, output) triples a correct reader must produce) for each input kind."""
    if kind == "selfinstruct":
        return SEEDS, expected_seed_triples(SEEDS)
    if kind in ("alpaca-array", "alpaca-jsonl"):
        path = TEST_DATA / ("alpaca.json" if kind == "alpaca-array" else "alpaca.jsonl")
        if kind == "alpaca-array":
            items = json.loads(path.read_text(encoding="utf-8"))
        else:
            items = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
        return path, [(o.get("instruction") or o.get("prompt") or o.get("question"), o.get("input", ""),
                       o.get("output") or o.get("response") or o.get("answer")) for o in items]
    if kind == "sharegpt":
        path = tmp / "sharegpt.jsonl"
        path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in SHAREGPT), encoding="utf-8")
        return path, [(next(t["value"] for t in o["conversations"] if t["from"] == "human"), "",
                       next(t["value"] for t in o["conversations"] if t["from"] == "gpt")) for o in SHAREGPT]
    if kind == "messages":
        path = TEST_DATA / "messages.jsonl"
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            msgs = json.loads(line)["messages"]
            out.append((next(m["content"] for m in msgs if m["role"] == "user"), "",
                        next(m["content"] for m in msgs if m["role"] == "assistant")))
        return path, out
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp / "outside.parquet"
        pq.write_table(pa.table(TABLE), path)
        return path, list(zip(TABLE["instruction"], TABLE["input"], TABLE["output"]))
    if kind == "hf":
        import datasets

        path = tmp / "hf_saved"
        datasets.Dataset.from_dict(TABLE).save_to_disk(str(path))
        return path, list(zip(TABLE["instruction"], TABLE["input"], TABLE["output"]))
    raise AssertionError(kind)


INPUTS = ("selfinstruct", "alpaca-array", "alpaca-jsonl", "sharegpt", "messages", "parquet", "hf")
OUTPUTS = ("record", "alpaca", "chat", "sharegpt", "parquet")


@pytest.mark.parametrize("kind", INPUTS)
def test_reader_understands_each_input_format(kind, tmp_path):
    path, expected = make_input(kind, tmp_path)
    stats, sink = ReadStats(), RejectSink(tmp_path / "rejects.jsonl")
    records = list(read_records(path, rejects=sink, stats=stats))
    sink.close()
    assert triples(records) == expected
    assert stats.bad == 0 and not (tmp_path / "rejects.jsonl").exists()
    assert stats.read == len(expected)


@pytest.mark.parametrize("out_fmt", OUTPUTS)
@pytest.mark.parametrize("kind", INPUTS)
def test_round_trip_every_input_to_every_output(kind, out_fmt, tmp_path):
    path, _ = make_input(kind, tmp_path)
    records = list(read_records(path))
    out = tmp_path / f"out.{'parquet' if out_fmt == 'parquet' else 'jsonl'}"
    if out_fmt == "alpaca" and any(r.turns for r in records):  # one exchange cannot hold a conversation
        with pytest.raises(DataforgeError, match="Alpaca holds one exchange: write chat or sharegpt"):
            write_records(out, records, fmt=out_fmt)
        assert not out.exists()  # refused, not half-written
        records = [r for r in records if not r.turns]
    assert write_records(out, records, fmt=out_fmt) == len(records)
    back = list(read_records(out))
    assert len(back) == len(records)
    if out_fmt in ("record", "parquet"):
        assert back == records  # every field, ids, lineage and meta included
    elif out_fmt == "alpaca":
        assert triples(back) == triples(records)
    else:  # chat, sharegpt: the input is folded into the user turn, the answer is the assistant turn
        assert [(b.instruction, b.input, b.output) for b in back] == [(r.prompt_text, "", r.output) for r in records]
        assert [b.id for b in back] == [r.id for r in records]
        assert [b.turns for b in back] == [r.turns for r in records]  # every later turn, typed


def test_multi_turn_conversations_survive_chat_to_chat(tmp_path):
    path, _ = make_input("sharegpt", tmp_path)
    out = tmp_path / "chat.jsonl"
    write_records(out, read_records(path), fmt="chat")
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    long = next(r for r in rows if r["id"] == "sg-2")
    assert [(m["role"], m["content"]) for m in long["messages"]] == [
        ("system", "You are terse."), ("user", "List two prime numbers."), ("assistant", "2, 3"),
        ("user", "Two more?"), ("assistant", "5, 7")]
    simple = next(r for r in rows if r["id"] == "sg-1")
    assert [m["role"] for m in simple["messages"]] == ["user", "assistant"]


def test_chat_output_loads_with_datasets_json_builder(tmp_path):
    import datasets

    out = tmp_path / "chat.jsonl"
    records = list(read_records(SEEDS))
    write_records(out, records, fmt="chat")
    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert "messages" in ds.column_names and len(ds) == len(records)
    first = ds[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[0]["content"] == records[0].prompt_text and first[1]["content"] == records[0].output


@needs_shared
def test_full_self_instruct_seed_file(shared_data, tmp_path):
    path = shared_data / "self_instruct_seed_tasks.jsonl"
    tasks = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    records = list(read_records(path))
    assert len(tasks) == 175
    assert triples(records) == expected_seed_triples(path)
    assert sum(r.task == "classification" for r in records) == sum(
        len(t["instances"]) for t in tasks if t["is_classification"])
    assert {r.meta["task_id"] for r in records} == {t["id"] for t in tasks}
    # the bundled examples are a verbatim subset
    full_lines = set(path.read_text(encoding="utf-8").splitlines())
    assert set(SEEDS.read_text(encoding="utf-8").splitlines()) <= full_lines
    for fmt in OUTPUTS:
        out = tmp_path / f"seeds.{fmt}"
        write_records(out, records, fmt=fmt)
        assert len(list(read_records(out))) == len(records)


def test_seed_records_carry_task_metadata():
    records = list(read_records(SEEDS))
    assert len(records) == 25
    cls = [r for r in records if r.task == "classification"]
    assert len(cls) == 5 and all(r.meta["is_classification"] for r in cls)
    assert all(r.meta["task_id"].startswith("seed_task_") and r.lineage.generator == "seed" for r in records)
    assert all(r.lineage.round == 0 for r in records)


# --------------------------------------------------------------------------- bad input: rejects and --strict


def test_bad_lines_go_to_rejects_with_line_numbers(tmp_path):
    src = TEST_DATA / "mixed_bad.jsonl"
    rej = tmp_path / "out.jsonl.bad-lines.jsonl"
    stats = ReadStats()
    with RejectSink(rej) as sink:
        good = list(read_records(src, rejects=sink, stats=stats))
    assert [r.instruction for r in good] == ["Spell the word cat backwards.", "Add the numbers.", "Say hello."]
    rows = [json.loads(x) for x in rej.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == [2, 3, 6, 7]
    assert [r["reason"].split(":")[0] for r in rows] == ["not JSON", "invalid", "not JSON", "not UTF-8"]
    assert rows[0]["raw"] == "this line is not JSON" and rows[0]["file"] == str(src)
    assert rows[3]["raw"].startswith("\\xff\\xfe{")  # undecodable bytes shown, not lost
    assert stats.bad == 4 and stats.items == 7 and stats.read == 3  # the blank line is neither
    assert dict(stats.reasons) == {"not JSON": 2, "invalid": 1, "not UTF-8": 1} == dict(sink.counts)


def test_strict_names_file_and_line(tmp_path):
    src = TEST_DATA / "mixed_bad.jsonl"
    with pytest.raises(DataforgeError, match=r"mixed_bad\.jsonl:2: not JSON"):
        list(read_records(src, strict=True))


def test_strict_in_a_json_array_names_the_item(tmp_path):
    src = tmp_path / "arr.json"
    src.write_text(json.dumps([{"instruction": "ok"}, {"instruction": ["not", "text"]}]), encoding="utf-8")
    with pytest.raises(DataforgeError, match=r"arr\.json: item 2: invalid"):
        list(read_records(src, strict=True))


def test_a_new_reject_sink_replaces_stale_rejects(tmp_path):
    rej = tmp_path / "x.rejects.jsonl"
    rej.write_text('{"stale": true}\n')
    sink = RejectSink(rej)
    assert not rej.exists()
    sink.add("f", 1, "raw", "not JSON: x")
    sink.close()
    assert [json.loads(x)["raw"] for x in rej.read_text().splitlines()] == ["raw"]
    RejectSink(rej, append=True).close()
    assert rej.exists()


@pytest.mark.parametrize("line, reason", [
    ('{"instruction": "x", "output": NaN}', "not JSON"),
    ('{"instruction": "x", "n": ' + "9" * 5000 + "}", "not JSON"),
    ("[" * 50000 + "]" * 50000, "not JSON"),
    ('{"instruction": "lone \\ud800 half"}', "invalid"),
    ('{"instruction": "x", "meta": {"k": "\\udfff"}}', "invalid"),
    ('["instruction"]', "invalid"),
    ('{"instruction": "x", "status": "maybe"}', "invalid"),
])
def test_odd_lines_are_rejected_not_crashed(line, reason, tmp_path):
    src = tmp_path / "odd.jsonl"
    src.write_text('{"instruction": "fine"}\n' + line + "\n", encoding="utf-8")
    stats = ReadStats()
    good = list(read_records(src, "record", stats=stats))
    assert [r.instruction for r in good] == ["fine"]
    assert stats.bad == 1 and list(stats.reasons) == [reason]


def test_valid_surrogate_pairs_are_fine(tmp_path):
    src = tmp_path / "emoji.jsonl"
    src.write_text('{"instruction": "smile \\ud83d\\ude00"}\n', encoding="utf-8")
    assert [r.instruction for r in read_records(src)] == ["smile 😀"]


def test_missing_empty_and_unknown_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataforgeError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataforgeError, match="empty"):
        list(read_records(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n  \n")
    with pytest.raises(DataforgeError, match="cannot tell the format"):
        list(read_records(blank))
    with pytest.raises(DataforgeError, match="not a saved Hugging Face dataset"):
        list(read_records(tmp_path))
    with pytest.raises(DataforgeError, match="unknown input format"):
        list(read_records(SEEDS, "csv"))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a"}, {"instruction": ')
    with pytest.raises(DataforgeError, match="malformed JSON array after item 1"):
        list(read_records(broken))


# --------------------------------------------------------------------------- detection and odd containers


def test_format_detection():
    assert detect_format(SEEDS) == "selfinstruct"
    assert detect_format(TEST_DATA / "alpaca.json") == "json-array"
    assert detect_format(TEST_DATA / "alpaca.jsonl") == "alpaca"
    assert detect_format(TEST_DATA / "messages.jsonl") == "chat"
    assert detect_format(TEST_DATA / "mixed_bad.jsonl") == "record"


def test_forced_format_applies_to_json_arrays(tmp_path):
    arr = tmp_path / "data.json"
    arr.write_text(json.dumps([{"instruction": "a", "output": "b", "status": "accepted"}]))
    # auto: keys fit a Record; forced alpaca: same text, status kept, lineage says it was imported
    (auto,) = read_records(arr)
    (forced,) = read_records(arr, "alpaca")
    assert auto.status == forced.status == "accepted"
    assert forced.lineage.generator == "import" and auto.lineage.generator is None


def test_byte_order_mark_is_ignored(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "a", "output": "b"}\n')
    assert triples(read_records(src)) == [("a", "", "b")]
    arr = tmp_path / "bom.json"
    arr.write_bytes(b"\xef\xbb\xbf" + b'[{"instruction": "a"}]')
    assert triples(read_records(arr)) == [("a", "", "")]


def test_alpaca_keeps_every_key():
    records = list(read_records(TEST_DATA / "alpaca.json"))
    assert records[2].task == "classification"  # a Record field in an Alpaca file stays a field
    assert records[3].meta == {"source": "hand-written"}  # a foreign key goes to meta
    assert records[3].lineage.generator == "import" and records[3].instruction == "What is 12 * 7?"


def test_count_items_for_progress_totals(tmp_path):
    assert count_items(SEEDS) == 25
    assert count_items(TEST_DATA / "mixed_bad.jsonl") == 8
    no_newline = tmp_path / "n.jsonl"
    no_newline.write_text('{"instruction": "a"}\n{"instruction": "b"}')
    assert count_items(no_newline) == 2
    assert count_items(TEST_DATA / "alpaca.json") is None
    assert count_items(tmp_path / "missing.jsonl") is None


# --------------------------------------------------------------------------- writers: atomic, parquet schema


def test_writer_exception_leaves_no_partial_output(tmp_path):
    for fmt in ("record", "parquet"):
        out = tmp_path / f"out-{fmt}"
        with pytest.raises(RuntimeError):
            with RecordWriter(out, fmt, batch_size=2) as w:
                for i in range(5):
                    w.write(Record(instruction=f"task {i}"))
                raise RuntimeError("killed mid-write")
        assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


def test_failed_rewrite_keeps_the_previous_file(tmp_path):
    out = tmp_path / "out.jsonl"
    write_records(out, [Record(instruction="old")])
    before = out.read_bytes()

    def records():
        yield Record(instruction="new")
        raise ValueError("generator died")

    with pytest.raises(ValueError):
        write_records(out, records())
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_readers_never_see_a_half_written_file(tmp_path):
    out = tmp_path / "out.jsonl"
    with RecordWriter(out) as w:
        w.write(Record(instruction="a"))
        assert not out.exists()  # only a hidden temp file exists until close
    assert out.exists() and out.read_text().count("\n") == 1


def test_atomic_files_get_ordinary_permissions(tmp_path):
    # mkstemp makes 0600 files; outputs must get what open() would give (0666 less the umask)
    mask = os.umask(0)
    os.umask(mask)
    out = tmp_path / "o.jsonl"
    write_records(out, [Record(instruction="a")])
    write_json_atomic(tmp_path / "s.json", {"a": 1})
    assert (out.stat().st_mode & 0o777) == 0o666 & ~mask
    assert ((tmp_path / "s.json").stat().st_mode & 0o777) == 0o666 & ~mask


def test_write_json_atomic_failure_keeps_old_document(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"step": 1})

    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        write_json_atomic(target, {"step": 2, "bad": Unprintable()})
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_parquet_schema_is_fixed_across_batches(tmp_path):
    # first batch has no complexity/topic/task at all, a later one has them: the schema must not be
    # inferred from the first batch (it would be null-typed and the second batch would fail)
    records = [Record(instruction=f"q{i}") for i in range(3)] + [
        Record(instruction="q3", complexity=7.5, topic="math", task="math", scores={"c": 0.5})]
    out = tmp_path / "r.parquet"
    with RecordWriter(out, "parquet", batch_size=2) as w:
        w.write_all(records)
    assert list(read_records(out)) == records
    empty = tmp_path / "empty.parquet"
    write_records(empty, [], fmt="parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(empty).num_rows == 0 and "instruction" in pq.read_table(empty).column_names


def test_unknown_output_format_is_an_error(tmp_path):
    with pytest.raises(DataforgeError, match="unknown output format"):
        RecordWriter(tmp_path / "x.csv", "csv")


# --------------------------------------------------------------------------- journal


def test_journal_repairs_a_torn_last_line_and_resumes(tmp_path):
    path = tmp_path / "out.partial.jsonl"
    with Journal(path) as j:
        for i in range(3):
            j.append(Record(instruction=f"done {i}"))
    with open(path, "ab") as fh:  # a crash in the middle of writing the 4th entry
        fh.write(b'{"id": "x", "instruction": "half wri')
    j = Journal(path)
    assert j.repaired == len(b'{"id": "x", "instruction": "half wri')
    assert [r.instruction for r in j.existing_records()] == ["done 0", "done 1", "done 2"]
    j.append({"instruction": "done 3"})
    j.close()
    assert [json.loads(x)["instruction"] for x in path.read_text().splitlines()] == [
        "done 0", "done 1", "done 2", "done 3"]
    j.remove()
    assert not path.exists()


def test_repair_tail_cases(tmp_path):
    p = tmp_path / "j.jsonl"
    assert repair_tail(p) == 0  # missing file: nothing to do
    p.write_bytes(b"no newline at all")
    assert repair_tail(p) == 17 and p.read_bytes() == b""
    big = b'{"a": 1}\n' + b"x" * 200_000  # torn line longer than one read chunk
    p.write_bytes(big)
    assert repair_tail(p) == 200_000 and p.read_bytes() == b'{"a": 1}\n'
    assert repair_tail(p) == 0


def test_journal_reports_a_damaged_entry_with_its_line(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with Journal(path) as j:
        with pytest.raises(DataforgeError, match=r"j\.jsonl:2: damaged journal entry"):
            list(j.existing())


# --------------------------------------------------------------------------- gzip


def test_gzip_inputs_and_outputs_round_trip(tmp_path):
    import gzip

    records = list(read_records(SEEDS))
    src = tmp_path / "seeds.jsonl.gz"
    src.write_bytes(gzip.compress(SEEDS.read_bytes()))
    assert list(read_records(src)) == records  # read through the compression, format detected inside
    arr = tmp_path / "alpaca.json.gz"
    arr.write_bytes(gzip.compress((TEST_DATA / "alpaca.json").read_bytes()))
    assert list(read_records(arr)) == list(read_records(TEST_DATA / "alpaca.json"))
    nosuffix = tmp_path / "data.bin"  # recognised by its magic bytes, not its name
    nosuffix.write_bytes(gzip.compress(SEEDS.read_bytes()))
    assert list(read_records(nosuffix)) == records
    for fmt in ("record", "chat"):
        out = tmp_path / f"out.{fmt}.jsonl.gz"
        write_records(out, records, fmt=fmt)
        with gzip.open(out, "rt", encoding="utf-8") as fh:  # a real gzip file any tool can read
            assert sum(1 for _ in fh) == len(records)
        assert len(list(read_records(out))) == len(records)
    again = tmp_path / "again.jsonl.gz"
    write_records(again, records)
    assert again.read_bytes() == (tmp_path / "out.record.jsonl.gz").read_bytes()  # deterministic bytes


def test_damaged_gzip_is_a_clear_error(tmp_path):
    import gzip

    data = gzip.compress(SEEDS.read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataforgeError, match=r"cut\.jsonl\.gz: unreadable after line \d+"):
        list(read_records(cut, "selfinstruct"))
    fake = tmp_path / "fake.json.gz"
    fake.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataforgeError, match=r"fake\.json\.gz: unreadable"):
        list(read_records(fake))
    with pytest.raises(DataforgeError, match="Parquet compresses itself"):
        RecordWriter(tmp_path / "x.parquet.gz", "parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.jsonl.gz", "fake.json.gz"]


def test_unwritable_record_is_a_clear_error(tmp_path):
    out = tmp_path / "o.jsonl"
    bad = Record(instruction="ok", meta={"note": "half \ud800 surrogate"})
    with pytest.raises(DataforgeError, match=f"record {bad.id} cannot be written"):
        write_records(out, [Record(instruction="fine"), bad])
    assert not out.exists()
