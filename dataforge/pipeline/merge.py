"""Put shard outputs back together in the order one unsharded run writes.

Two kinds of parts:
- stage output files with their ``.order.json`` sidecars: a streaming k-way merge on the source
  keys (each part is already sorted by key, and a source belongs to exactly one shard);
- run directories of `dataforge run --shard i/n`: every stage finished in all shards is merged into
  a new run directory whose manifest marks it done with the key an unsharded run computes, so
  `dataforge run PIPELINE --run-dir MERGED` carries on with the global stages (balance, train).
"""

from __future__ import annotations

import heapq
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataforgeError
from ..io import atomic_open
from . import order
from ..hashing import file_hash
from .manifest import MANIFEST, Manifest

# --------------------------------------------------------------------------- files


def _keyed_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    keys = order.read_keys(path)
    if keys is None:
        raise DataforgeError(f"{path}: no {order.order_path(path).name} beside it; merge needs the outputs of "
                             "`dataforge run --shard` (or a run directory)")
    n = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            if n >= len(keys):
                raise DataforgeError(f"{path}: more records than its order file lists ({len(keys)}); was it edited?")
            yield keys[n], raw if raw.endswith(b"\n") else raw + b"\n"
            n += 1
    if n != len(keys):
        raise DataforgeError(f"{path}: {n} records but its order file lists {len(keys)}; was it edited?")


def _check_shards(infos: list[dict[str, Any]], names: list[str]) -> None:
    shards = [tuple(i.get("shard") or ()) for i in infos]
    if any(len(s) != 2 for s in shards):
        return  # parts without shard info (e.g. Ray batches): nothing to check
    ns = {s[1] for s in shards}
    if len(ns) != 1:
        raise DataforgeError(f"parts come from different shard counts: {', '.join(f'{n}={s[0]}/{s[1]}' for n, s in zip(names, shards))}")
    n = ns.pop()
    seen = Counter(s[0] for s in shards)
    dup = [i for i, c in seen.items() if c > 1]
    missing = [i for i in range(1, n + 1) if i not in seen]
    if dup:
        raise DataforgeError(f"shard(s) {', '.join(map(str, dup))} given twice")
    if missing:
        raise DataforgeError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing; merge needs all {n}")


def merge_files(parts: list[Path], out: Path) -> dict[str, Any]:
    """Merge stage outputs from shards into `out` (and its order sidecar); returns counts."""
    infos = []
    for p in parts:
        if not p.is_file():
            raise DataforgeError(f"{p}: no such file")
        try:
            infos.append(json.loads(order.order_path(p).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            infos.append({})
    _check_shards(infos, [str(p) for p in parts])
    keys: list[int] = []
    with atomic_open(out, "wb") as fh:
        streams = [_keyed_lines(p) for p in parts]
        for key, raw in heapq.merge(*streams, key=lambda kv: kv[0]):
            fh.write(raw)
            keys.append(key)
    per_part = [len(order.read_keys(p) or []) for p in parts]
    stage = next((i.get("stage") for i in infos if i.get("stage")), None)
    order.write_keys(out, keys, shard=None, stage=stage)
    return {"records": len(keys), "parts": per_part}


# --------------------------------------------------------------------------- run directories


def _sum_counts(entries: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for e in entries:
        for k, v in (e.get("counts") or {}).items():
            if isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + v
            elif isinstance(v, dict):
                sub = total.setdefault(k, {})
                for kk, vv in v.items():
                    sub[kk] = sub.get(kk, 0) + vv
    return total


def _sum_tokens(entries: list[dict[str, Any]]) -> dict[str, Any]:
    c: Counter[str] = Counter()
    for e in entries:
        for k, v in (e.get("tokens") or {}).items():
            if isinstance(v, (int, float)):
                c[k] += v
    return dict(c)


def merge_runs(run_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Merge the finished stages of sharded run directories into `out_dir` (a resumable run dir)."""
    manifests = []
    for d in run_dirs:
        if not (d / MANIFEST).is_file():
            raise DataforgeError(f"{d}: not a run directory (no {MANIFEST})")
        manifests.append(Manifest.load(d).data)
    _check_shards([{"shard": m.get("shard")} for m in manifests], [str(d) for d in run_dirs])
    hashes = {m.get("config_hash") for m in manifests}
    if len(hashes) != 1:
        raise DataforgeError("the run directories come from different pipeline configs; merge only shards of one job")
    first = manifests[0]
    merged = Manifest(out_dir, {k: v for k, v in first.items() if k not in ("stages", "runs", "totals")})
    merged.data.update({"shard": None, "merged_from": [str(d.resolve()) for d in run_dirs], "stages": {}})
    report: dict[str, Any] = {}
    prev_output_hash: str | None = None
    for name in first.get("order", []):
        entries = [m.get("stages", {}).get(name) or {} for m in manifests]
        if not all(e.get("status") == "done" for e in entries):
            report[name] = "not finished in every shard: left for `dataforge run` to do"
            break
        outs = [Path(e["output"]) for e in entries]
        if not all(p.exists() for p in outs):
            outs = [d / name / Path(e["output"]).name for d, e in zip(run_dirs, entries)]
        target = out_dir / name / outs[0].name
        entry = json.loads(json.dumps(entries[0]))
        sharded = bool((entries[0].get("key") or {}).get("shard"))
        if sharded:
            counts = merge_files(outs, target)
            key = dict(entry["key"])
            key["shard"] = None
            if prev_output_hash is not None:
                key["input_hash"] = prev_output_hash
            entry.update({"key": key, "counts": _sum_counts(entries), "tokens": _sum_tokens(entries),
                          "seconds": round(sum(float(e.get("seconds") or 0) for e in entries), 3),
                          "seconds_max_shard": max(float(e.get("seconds") or 0) for e in entries),
                          "summary": {"shards": [e.get("summary") for e in entries]}})
            report[name] = f"merged {counts['records']} records from {len(outs)} shards"
        else:
            if len({e.get("output_hash") for e in entries}) != 1:
                raise DataforgeError(f"stage {name!r} ran whole in every shard but came out different; "
                                     "re-run it once without --shard")
            target.parent.mkdir(parents=True, exist_ok=True)
            if outs[0].is_dir():
                shutil.copytree(outs[0], target, dirs_exist_ok=True)
            else:
                shutil.copy2(outs[0], target)
                if order.order_path(outs[0]).is_file():
                    shutil.copy2(order.order_path(outs[0]), order.order_path(target))
            report[name] = "copied (identical in every shard)"
        entry["output"] = str(target)
        entry["output_hash"] = file_hash(target)
        prev_output_hash = entry["output_hash"]
        merged.set_stage(name, entry)
    merged.data.setdefault("runs", []).append({"merged": report})
    merged.save()
    return {"run_dir": str(out_dir), "stages": report}


def merge(parts: list[Path], out: Path) -> dict[str, Any]:
    """Run directories or stage output files, whichever was given."""
    if not parts:
        raise DataforgeError("nothing to merge: give the shard outputs or run directories")
    kinds = {p.is_dir() for p in parts}
    if len(kinds) != 1:
        raise DataforgeError("give either run directories or output files, not a mix")
    if kinds.pop():
        return merge_runs(parts, out)
    return merge_files(parts, out)
