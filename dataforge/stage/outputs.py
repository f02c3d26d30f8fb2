"""`Outputs`: the files a stage writes its records to, committed together or not at all.

A stage writes every record once, through `write`; the record's status decides the file (the stage
declares which statuses go to a side file, e.g. the gate's review and rejected records), and every file
is counted by status for the summary. Files open on the first record (a killed run leaves no temp
files behind from hours earlier), declared files that got no record are still written (empty), and
`commit` renames them all into place only when the whole stage succeeded.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..io import RecordWriter
from ..records import Record


class Outputs:
    """Main output in `fmt`; records whose status is in `split` go to that file (Record format);
    `copies` receive every record of the main output again, each in its own format."""

    def __init__(self, output: Path, fmt: str, split: dict[str, Path] | None = None,
                 copies: list[tuple[Path, str]] | None = None):
        self.files: dict[str, tuple[Path, str]] = {"output": (Path(output), fmt)}
        self._route: dict[str, str] = {}
        for status, path in (split or {}).items():
            self.files[status] = (Path(path), "record")
            self._route[status] = status
        self._copies = [f"copy:{p}" for p, _ in copies or []]
        for (path, fmt_), role in zip(copies or [], self._copies):
            self.files[role] = (Path(path), fmt_)
        self._writers: dict[str, RecordWriter] = {}
        self.counts: dict[str, Counter[str]] = {role: Counter() for role in self.files}

    def _writer(self, role: str) -> RecordWriter:
        w = self._writers.get(role)
        if w is None:
            path, fmt = self.files[role]
            w = self._writers[role] = RecordWriter(path, fmt)
        return w

    def write(self, record: Record) -> None:
        role = self._route.get(record.status, "output")
        self._writer(role).write(record)
        self.counts[role][record.status] += 1
        if role == "output":
            for copy in self._copies:
                self._writer(copy).write(record)
                self.counts[copy][record.status] += 1

    def by_status(self) -> dict[str, int]:
        """Records written, by status, over the output and its side files (copies not counted twice)."""
        total: Counter[str] = Counter()
        for role, c in self.counts.items():
            if not role.startswith("copy:"):
                total.update(c)
        return dict(total)

    def produced(self) -> int:
        """Records in the main output that are not rejected: what the stage made for the next one."""
        return sum(n for status, n in self.counts["output"].items() if status != "rejected")

    def paths(self) -> dict[str, str]:
        return {("copy" if role.startswith("copy:") else role): str(path) for role, (path, _) in self.files.items()}

    def commit(self) -> None:
        """Write every declared file (empty where no record came) and rename them all into place."""
        for role in self.files:
            self._writer(role)
        try:
            for w in self._writers.values():
                w.close()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Throw away what was written; the files keep whatever they held before the stage ran."""
        for w in self._writers.values():
            if not getattr(w, "_closed", False):
                w.abort()
