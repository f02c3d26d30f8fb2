"""Property tests: whatever bytes a file holds, the reader only ever raises DataforgeError, every bad
line lands in the rejects file with its line number and raw text, and good lines come through with
their text fields unchanged, byte for byte (also after writing and reading them again)."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataforge.errors import DataforgeError
from dataforge.io import ReadStats, RejectSink, read_records, write_records

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@st.composite
def good_line(draw):
    """A valid Record line: arbitrary text fields, optional id/meta, any JSON spacing and escaping."""
    obj = {"instruction": draw(st.text()), "input": draw(st.text()), "output": draw(st.text())}
    if draw(st.booleans()):
        obj["id"] = draw(st.text(min_size=1, max_size=20))
    if draw(st.booleans()):
        obj["meta"] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), indent=None,
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    before, after = draw(st.sampled_from(["", " ", "\t"])), draw(st.sampled_from(["", " ", "\t", "\r"]))
    return ("good", obj, (before + text + after).encode("utf-8"))


@st.composite
def bad_line(draw):
    """Lines that can never be a Record: broken bytes, prose, JSON that is not a record object."""
    kind = draw(st.sampled_from(["bytes", "prose", "json", "truncated"]))
    if kind == "bytes":  # contains at least one byte that is never valid UTF-8
        data = draw(st.binary(max_size=40)).replace(b"\n", b"")
        return ("bad", None, data + b"\xff" + draw(st.binary(max_size=5)).replace(b"\n", b""))
    if kind == "prose":
        return ("bad", None, ("# " + draw(st.text(max_size=40)).replace("\n", " ")).encode("utf-8"))
    if kind == "json":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return ("bad", None, json.dumps(value).encode("utf-8"))
    obj = json.dumps({"instruction": draw(st.text(max_size=20))})
    return ("bad", None, obj[: draw(st.integers(1, len(obj) - 1))].encode("utf-8"))


@st.composite
def any_line(draw):
    """Arbitrary bytes without a newline: might even be a valid record by chance."""
    return ("any", None, draw(st.binary(max_size=60)).replace(b"\n", b""))


def expected_raw(data: bytes, lineno: int) -> str:
    if lineno == 1 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    data = data.rstrip(b"\r\n")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="backslashreplace")


@SETTINGS
@given(st.lists(st.one_of(good_line(), bad_line(), any_line(), st.just(("blank", None, b""))), max_size=25))
def test_reader_accounts_for_every_line(lines):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_bytes(b"\n".join(data for _, _, data in lines) + b"\n")
        rej = Path(tmp) / "out.jsonl.rejects.jsonl"
        stats = ReadStats()
        with RejectSink(rej) as sink:
            try:
                records = list(read_records(src, "record", rejects=sink, stats=stats))
            except DataforgeError as exc:
                # only the empty file, or one that starts with the gzip magic (read as gzip, whatever its
                # name, and damaged), may stop a forced-format read, and the error names the file
                data = src.read_bytes()
                assert not data or data.startswith(b"\x1f\x8b"), exc
                assert str(src) in str(exc)
                return
        # JSONL lines end at "\n" only (str.splitlines would also split at U+0085, U+2028, ...)
        rejects = [json.loads(x) for x in rej.read_text(encoding="utf-8").split("\n") if x] if rej.exists() else []

        nonblank = [n for n, (_, _, data) in enumerate(lines, start=1)
                    if (data.removeprefix(b"\xef\xbb\xbf") if n == 1 else data).strip()]  # a BOM is not content
        rejected = [r["line"] for r in rejects]
        # every non-blank line is either one record or one reject, never both, never neither
        assert len(records) + len(rejects) == len(nonblank) == stats.items
        assert len(set(rejected)) == len(rejected) and set(rejected) <= set(nonblank)
        assert stats.bad == len(rejects) == sink.total

        for r in rejects:
            assert r["file"] == str(src) and r["reason"]
            assert r["raw"] == expected_raw(lines[r["line"] - 1][2], r["line"])
        # known-bad lines are rejected; known-good lines are not, and come through unchanged, in order
        for n, (kind, _, _) in enumerate(lines, start=1):
            if kind == "bad":
                assert n in rejected
            if kind == "good":
                assert n not in rejected
        good_objs = iter(obj for kind, obj, _ in lines if kind == "good")
        accepted_lines = [n for n in nonblank if n not in set(rejected)]
        for n, record in zip(accepted_lines, records):
            if lines[n - 1][0] != "good":
                continue
            obj = next(good_objs)
            assert (record.instruction, record.input, record.output) == (obj["instruction"], obj["input"], obj["output"])
            if "id" in obj:
                assert record.id == obj["id"]
            if "meta" in obj:
                assert record.meta == obj["meta"]

        # and the good records survive a write + read of every text format unchanged
        for fmt in ("record", "alpaca"):
            out = Path(tmp) / f"out.{fmt}.jsonl"
            write_records(out, records, fmt=fmt)
            if records:
                back = list(read_records(out, "record"))  # alpaca rows fit the Record keys
                assert [(b.instruction, b.input, b.output) for b in back] == \
                    [(r.instruction, r.input, r.output) for r in records]


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".jsonl", ".json", ".parquet", ".txt", "", ".jsonl.gz", ".gz"]),
       st.sampled_from(["auto", "record", "alpaca", "chat", "selfinstruct"]))
def test_arbitrary_files_raise_only_dataforge_errors(data, suffix, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in{suffix}"
        src.write_bytes(data if not (suffix.endswith(".gz") and data[:1] == b"!") else gzip.compress(data[1:]))
        try:
            records = list(read_records(src, fmt, rejects=RejectSink(Path(tmp) / "r.jsonl")))
        except DataforgeError as exc:
            assert str(src) in str(exc)  # every error names the file
            return
        for r in records:  # whatever got through must be writable
            write_records(Path(tmp) / "o.jsonl", [r])


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"instruction": st.text(min_size=1).filter(str.strip), "input": st.text(),
                                       "output": st.text()}), min_size=1, max_size=10),
       st.booleans())
def test_json_arrays_keep_text_byte_for_byte(items, ascii_only):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.json"
        src.write_text(json.dumps(items, ensure_ascii=ascii_only, indent=1), encoding="utf-8")
        records = list(read_records(src, "alpaca"))
        assert [(r.instruction, r.input, r.output) for r in records] == \
            [(i["instruction"], i["input"], i["output"]) for i in items]
