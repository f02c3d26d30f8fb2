"""The journal of a stage run, whose first line fingerprints what decides the output.

Why: a killed run resumes from its journal, and resuming is only right with the same settings. The
header holds, separately, the stage and its journal version, the config fields that shape the output,
the input's content hash, side files the config names (their content), the model and prompt profile,
and the hash of the prompt templates. On reopen, any difference is refused with a message that names
what changed; ``restart=True`` (``--restart``) throws the journal away and starts over instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..errors import DataforgeError
from ..io import Journal
from .summary import Tokens

SPENT = "__spent__"  # key of the lines that record what a stopped attempt spent (never a stage's entry)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two headers, in words: config fields by name, the other parts by part."""
    changed = []
    for part in new:
        if old.get(part) == new[part]:
            continue
        if part == "config" and isinstance(old.get(part), dict):
            fields = sorted(k for k in {*old[part], *new[part]} if old[part].get(k) != new[part].get(k))
            changed.append("options " + ", ".join(fields))
        else:
            changed.append({"input": "the input", "side_inputs": "a file the options name",
                            "model": "the model", "prompts": "the prompt templates", "stage": "the stage",
                            "version": "the journal version (another dataforge version)"}.get(part, part))
    return changed


class JournalEntries:
    """What an earlier run finished: the entries after the header as the journal held them when it was
    opened, streamed from disk on each iteration (a million-record journal is never held in memory)."""

    def __init__(self, journal: Journal, start: int, end: int):
        self._journal, self.start, self.end = journal, start, end
        self._count: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, entry in self.with_offsets():
            yield entry

    def with_offsets(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(byte offset, entry): where to read an entry again (`JournalReader`); spending lines left out."""
        return ((off, e) for off, e in self._journal.scan(self.start, self.end) if SPENT not in e)

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self.with_offsets())
        return self._count

    def __bool__(self) -> bool:
        return next(self.with_offsets(), None) is not None


class StageJournal(Journal):
    """A `Journal` whose first line is the run's header; `entries` are what an earlier run finished."""

    def __init__(self, path: str | Path, header: dict[str, Any], *, restart: bool = False):
        path = Path(path)
        if restart:
            path.unlink(missing_ok=True)
        super().__init__(path)  # repairs a line torn by a kill
        first = next(self.scan(), None)
        if first is not None and first[1].get("header") != header:
            self.close()
            old = first[1].get("header")
            what = ", ".join(_differences(old, header)) if isinstance(old, dict) else "everything (an older format)"
            raise DataforgeError(
                f"{path}: an unfinished {header.get('stage', 'stage')} run with other settings left this journal "
                f"(changed: {what}); re-run with the same settings to resume it, or pass --restart to start over")
        if first is None:
            super().append({"header": header})
            self.sync()
        with open(self.path, "rb") as fh:
            after_header = len(fh.readline())
        self.entries = JournalEntries(self, after_header, self.size)
        self.spent = Tokens()  # what earlier, stopped attempts spent (a budget counts it)
        for _, e in self.scan(after_header, self.size):
            if SPENT in e:
                self.spent.add(Tokens.model_validate(e[SPENT]))
        self._appended = 0

    def append(self, item: Any) -> int:
        offset = super().append(item)
        self._appended += 1
        return offset

    def holds_work(self) -> bool:
        """Whether any finished work or recorded spending is in it (earlier runs' or this one's)."""
        return bool(self.entries) or self._appended > 0 or self.spent.total > 0

    def record_spent(self, tokens: Tokens) -> None:
        """Note what this attempt spent, so that a budget still counts it when the run resumes."""
        if tokens.total or tokens.requests:
            Journal.append(self, {SPENT: tokens.model_dump()})
            self.sync()

    def discard(self) -> None:
        """Remove the journal (the run finished, or its work must not be resumed)."""
        self.remove()
