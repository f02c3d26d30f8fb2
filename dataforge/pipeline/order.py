"""The deterministic order of record-parallel stage outputs, so shards and Ray batches merge back
into exactly what one unsharded run writes.

Every output record of a record-parallel stage descends from one input record (same id, or its
`lineage.root`/`parents`). Outputs are grouped by that source in input order, keeping the stage's
own order inside a group; the source's position in the job's input (its *key*) is written beside
the output in ``<out>.order.json``. A shard keeps the keys of the full input, so `merge` restores the
unsharded order with a streaming k-way merge on the keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ..io import atomic_open, read_records, write_json_atomic
from ..records import Record
from ..stage import SideFiles


def order_path(out: str | os.PathLike) -> Path:
    return SideFiles(out).order


def read_keys(path: str | os.PathLike) -> list[int] | None:
    p = order_path(path)
    if not p.is_file():
        return None
    try:
        return list(json.loads(p.read_text(encoding="utf-8"))["keys"])
    except (ValueError, KeyError):
        return None


def write_keys(path: str | os.PathLike, keys: list[int], **info) -> None:
    write_json_atomic(order_path(path), {**info, "count": len(keys), "keys": keys})


def input_keys(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Ids of the records in `path` and their keys (from its sidecar, else their positions)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return [], []
    ids = [r.id for r in read_records(path)]
    keys = read_keys(path)
    if keys is None or len(keys) != len(ids):
        keys = list(range(len(ids)))
    return ids, keys


def source_key(r: Record, key_of: dict[str, int], missing: int) -> int:
    if r.id in key_of:
        return key_of[r.id]
    for candidate in (r.lineage.root, *r.lineage.parents):
        if candidate and candidate in key_of:
            return key_of[candidate]
    return missing


def canonicalize(output: str | os.PathLike, ids: list[str], keys: list[int], **info) -> dict[str, int]:
    """Stable-sort a Record JSONL output by source key (rewritten atomically only if it moves) and
    write its key sidecar. Returns {"records": n, "unmatched": m}."""
    out = Path(output)
    key_of: dict[str, int] = {}
    for i, k in zip(ids, keys):
        key_of.setdefault(i, k)
    missing = (max(keys) + 1) if keys else 0
    spans: list[tuple[int, int, int, int]] = []  # key, position, offset, length
    unmatched = 0
    with open(out, "rb") as fh:
        pos = 0
        offset = 0
        for raw in fh:
            if raw.strip():
                r = Record.model_validate_json(raw)
                k = source_key(r, key_of, missing)
                unmatched += k == missing
                spans.append((k, pos, offset, len(raw)))
                pos += 1
            offset += len(raw)
    ordered = sorted(spans, key=lambda s: (s[0], s[1]))
    if [s[1] for s in ordered] != list(range(len(ordered))):
        _rewrite(out, ordered)
    write_keys(out, [s[0] for s in ordered], **info)
    return {"records": len(ordered), "unmatched": unmatched}


def _rewrite(out: Path, spans: Iterable[tuple[int, int, int, int]]) -> None:
    with open(out, "rb") as src, atomic_open(out, "wb") as dst:
        for _, _, offset, length in spans:
            src.seek(offset)
            line = src.read(length)
            dst.write(line if line.endswith(b"\n") else line + b"\n")
