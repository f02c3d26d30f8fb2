"""Deterministic sharding by record id, so any scheduler can split a record-parallel stage across
machines (`--shard i/n`, 1-based) and `dataforge merge` can put the parts back together."""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

from .errors import DataforgeError
from .records import Record


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """`"2/3"` -> (2, 3); None/"" -> None. 1 <= i <= n."""
    if not spec:
        return None
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise DataforgeError(f"--shard must look like i/n (e.g. 1/4), got {spec!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise DataforgeError(f"--shard {spec}: need 1 <= i <= n")
    return i, n


def shard_of(record_id: str, n: int) -> int:
    """1-based shard a record id belongs to; stable across machines and Python versions."""
    return int.from_bytes(hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest(), "big") % n + 1


def select(records: Iterable[Record], spec: str | tuple[int, int] | None) -> Iterator[Record]:
    """Only the records of shard `spec` (all of them when spec is None)."""
    shard = parse_shard(spec) if isinstance(spec, str) or spec is None else spec
    if shard is None:
        yield from records
        return
    i, n = shard
    for r in records:
        if shard_of(r.id, n) == i:
            yield r
