"""`SideFiles(out)`: the one place that names every file a stage writes beside its output.

Why one object: the names used to be spelled in seven functions over five modules, the pipeline found
them by globbing, and two of them differed by two letters (``.rejects.jsonl`` for unreadable input,
``.rejected.jsonl`` for rejected records). Unreadable input now goes to ``<out>.bad-lines.jsonl``; the
old name is still found where earlier runs left it (`bad_lines_written`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ..errors import DataforgeError

# role -> suffix after the output's own name; the order is the order they are listed in summaries
SUFFIXES = {
    "bad_lines": ".bad-lines.jsonl",  # input items that are not records: {"file", "line", "raw", "reason"}
    "rejected": ".rejected.jsonl",  # records a stage rejected (status rejected, with reasons)
    "review": ".review.jsonl",  # records held for a person to look at (status review)
    "stats": ".stats.json",  # balance's statistics for steering the generators
    "journal": ".partial.jsonl",  # finished work of an unfinished run (removed when the run ends)
    "order": ".order.json",  # source positions of a record-parallel output, for merging shards
    "work": ".work",  # a folder of per-record state spilled to disk while the stage runs (removed after)
}
LEGACY_BAD_LINES = ".rejects.jsonl"  # the name before the stage contract


class _Side:
    """`SideFiles.<role>`: the output's path plus that role's suffix."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.suffix = SUFFIXES[name]

    def __get__(self, files: "SideFiles", owner: type | None = None) -> Path:
        return Path(f"{files.output}{self.suffix}")


class SideFiles:
    """The output file and every side file next to it (one attribute per role in `SUFFIXES`)."""

    bad_lines = _Side()
    rejected = _Side()
    review = _Side()
    stats = _Side()
    journal = _Side()
    order = _Side()
    work = _Side()

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)

    def __repr__(self) -> str:
        return f"SideFiles({str(self.output)!r})"

    @property
    def legacy_bad_lines(self) -> Path:
        return Path(f"{self.output}{LEGACY_BAD_LINES}")

    def bad_lines_written(self) -> Path | None:
        """Where this output's unreadable input lines are: the current name, else the pre-contract one."""
        for p in (self.bad_lines, self.legacy_bad_lines):
            if p.is_file():
                return p
        return None

    def record_files(self) -> dict[str, Path]:
        """The side files that hold JSON lines (records or bad input lines) and exist, by role.
        The journal is left out: it is work in progress, not a result."""
        found = {"bad_lines": self.bad_lines, "rejected": self.rejected, "review": self.review}
        found = {role: p for role, p in found.items() if p.is_file()}
        if "bad_lines" not in found and self.legacy_bad_lines.is_file():
            found["bad_lines"] = self.legacy_bad_lines
        return found

    def drop_empty(self) -> None:
        """Remove empty record side files: they say nothing, and a reader (rightly) refuses empty input."""
        for p in self.record_files().values():
            if p.stat().st_size == 0:
                p.unlink()

    def check_writable(self, *others: Path) -> None:
        """Fail now, not after hours of work, when a folder stands where the output (or `others`) will go."""
        for p in (self.output, *others):
            if p.is_dir():
                raise DataforgeError(f"{p}: is a folder; give an output file name")


def side_reasons(path: str | os.PathLike) -> dict[str, int]:
    """Reasons in a file of set-aside items: Records (`reasons`) or bad input lines (`reason`)."""
    c: Counter[str] = Counter()
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            reasons = obj.get("reasons") if isinstance(obj.get("reasons"), list) else [obj.get("reason")]
            for r in reasons or ["(none)"]:
                c[str(r or "(none)").split(":", 1)[0]] += 1
    return dict(c)


def count_lines(path: str | os.PathLike) -> int:
    p = Path(path)
    if not p.is_file():
        return 0
    with open(p, "rb") as fh:
        return sum(1 for line in fh if line.strip())
