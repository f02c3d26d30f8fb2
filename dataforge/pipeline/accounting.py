"""What a pipeline stage cost and where its records went, for the manifest.

Counts are read back from the files themselves (the output and every side file `SideFiles` names),
not taken from the stage's word, so the manifest accounts for every input record independently. Token
usage of a running stage is saved every few seconds (`Heartbeat`), so a crash loses at most that much
accounting, and an interrupted attempt's tokens are carried into the next attempt's entry.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..llm import LLM, Usage
from ..stage import SideFiles, Tokens
from .manifest import Manifest, count_lines, count_records, side_reasons


def usage_tokens(usage: Usage) -> dict[str, int]:
    """A model's running usage in the summary's token shape."""
    return Tokens(prompt=usage.prompt_tokens, completion=usage.completion_tokens, requests=usage.requests,
                  cached=usage.cached, failed=usage.errors).as_dict()


def file_counts(stage_input: Path, output: Path, output_is_dir: bool) -> dict[str, Any]:
    """Records in, records out by status and reason, and the records or lines in each side file."""
    counts: dict[str, Any] = {"in": count_records(stage_input)["records"]}
    if output_is_dir:
        return counts
    out = count_records(output)
    counts.update({"out": out["records"], "by_status": out["by_status"], "by_reason": out["by_reason"]})
    side = SideFiles(output)
    files = {p.name[len(output.name) + 1:]: p for p in side.record_files().values()}
    if files:
        counts["side_files"] = {name: count_lines(p) for name, p in files.items()}
        counts["side_files_by_reason"] = {name: side_reasons(p) for name, p in files.items()}
    return counts


def earlier_attempt_tokens(old: dict[str, Any], key: dict[str, Any]) -> dict[str, int]:
    """Tokens interrupted or budget-stopped attempts of this same stage (same key) spent."""
    if old.get("status") not in ("running", "failed", "stopped-budget") or old.get("key") != key:
        return {}
    total: dict[str, int] = dict(old.get("tokens_earlier_attempts") or {})
    last = old.get("tokens") if old.get("status") == "stopped-budget" else old.get("tokens_so_far")
    for k, v in (last or {}).items():
        total[k] = total.get(k, 0) + v
    return total


def add_tokens(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


class Heartbeat:
    """Saves the running stage's token usage into the manifest every few seconds."""

    def __init__(self, manifest: Manifest, entry: dict[str, Any], llm: LLM, every: float = 2.0):
        self.manifest, self.entry, self.llm, self.every = manifest, entry, llm, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dataforge-manifest-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.entry["tokens_so_far"] = usage_tokens(self.llm.usage)
            try:
                self.manifest.save()
            except Exception:  # a racing edit of the entry: the next beat writes it
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.entry.pop("tokens_so_far", None)
