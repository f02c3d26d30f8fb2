"""The run manifest: what was run, with what, and what came out, in `<run_dir>/manifest.json`.

It is rewritten atomically after every stage, so a killed run leaves the last finished stage on
record; the engine reads it back to decide what is already done. Secrets never enter it: keys
that look like credentials are dropped and any value equal to an API key in the environment is
replaced before writing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..io import write_json_atomic
from ..stage.sidefiles import count_lines, side_reasons  # noqa: F401  (re-exported: the accounting uses them)
from ..records import utc_now

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|authorization|bearer|access[_-]?token)", re.I)
_SECRET_ENV = ("OPENAI_API_KEY", "DATAFORGE_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ANTHROPIC_API_KEY")


def is_secret_name(name: str) -> bool:
    """A key or variable name that holds a credential (API keys, tokens, passwords)."""
    return bool(_SECRET_KEY.search(name)) or name.upper().endswith(("_TOKEN", "_KEY"))


def scrub(obj: Any) -> Any:
    """A copy of `obj` without credential-looking keys or values equal to a key in the environment."""
    secrets = {os.environ[k] for k in _SECRET_ENV if os.environ.get(k)}
    secrets |= {v for k, v in os.environ.items() if _SECRET_KEY.search(k) and v and len(v) >= 8}

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items() if not (isinstance(k, str) and _SECRET_KEY.search(k))}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, str):
            for s in secrets:
                if s in x:
                    x = x.replace(s, "***")
            return x
        return x

    return walk(obj)


def versions() -> dict[str, str]:
    """Versions of what shaped the output: python, dataforge and the main libraries that are loaded/installed."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("dataforge", "torch", "transformers", "openai", "pydantic", "datasets", "sentence-transformers",
                 "llama-cpp-python", "ray", "numpy", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def prompt_hashes() -> dict[str, str]:
    try:
        from ..prompts import default_library

        return default_library().hashes()
    except Exception:  # no prompts folder in a broken install: record that rather than fail the run
        return {}


def count_records(path: str | os.PathLike) -> dict[str, Any]:
    """Records in a stage output by status and by reason (the manifest's 'counts')."""
    from ..io import read_records

    p = Path(path)
    by_status: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    n = 0
    if p.is_dir() or (p.is_file() and p.stat().st_size > 0):  # a folder: a saved HF dataset
        for r in read_records(p):
            n += 1
            by_status[r.status] += 1
            for reason in r.reasons:
                by_reason[reason.split(":", 1)[0]] += 1
    return {"records": n, "by_status": dict(by_status), "by_reason": dict(by_reason)}


class Manifest:
    """The manifest as a dict with helpers; `save()` writes it atomically."""

    def __init__(self, run_dir: Path, data: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.data: dict[str, Any] = data or {"format": FORMAT_VERSION, "created": utc_now(), "stages": {}}

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST

    @classmethod
    def load(cls, run_dir: Path) -> "Manifest":
        p = Path(run_dir) / MANIFEST
        if p.is_file():
            try:
                return cls(run_dir, json.loads(p.read_text(encoding="utf-8")))
            except ValueError:
                pass  # a manifest is written atomically, so this is a hand edit: start a fresh record
        return cls(run_dir)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data.setdefault("stages", {}).setdefault(name, {})

    def set_stage(self, name: str, entry: dict[str, Any]) -> None:
        self.data.setdefault("stages", {})[name] = entry

    def save(self) -> None:
        self.data["updated"] = utc_now()
        self.data["totals"] = self._totals()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, scrub(self.data))

    def _totals(self) -> dict[str, Any]:
        """Sums over the stages: tokens (every attempt), seconds, tokens per operation (each stage's last
        attempt) and, when the run has prices, the cost of both."""
        tokens: Counter[str] = Counter()
        seconds = 0.0
        by_op: dict[str, Counter[str]] = {}
        for entry in self.data.get("stages", {}).values():
            for k, v in (entry.get("tokens_all_attempts") or entry.get("tokens") or {}).items():
                if isinstance(v, (int, float)):
                    tokens[k] += v
            seconds += float(entry.get("seconds") or 0.0)
            for op, t in ((entry.get("summary") or {}).get("tokens_by_operation") or {}).items():
                by_op.setdefault(op, Counter()).update({k: v for k, v in t.items() if isinstance(v, (int, float))})
        totals: dict[str, Any] = {"tokens": dict(tokens), "seconds": round(seconds, 3),
                                  "tokens_by_operation": {op: dict(c) for op, c in sorted(by_op.items())}}
        prices = self.data.get("prices")
        if prices:
            def cost(t: Counter[str]) -> float:
                return round((t["prompt"] * prices["input"] + t["completion"] * prices["output"]) / 1e6, 6)

            totals["cost_usd"] = cost(tokens)
            totals["cost_by_operation"] = {op: cost(c) for op, c in sorted(by_op.items())}
        return totals


def environment_record() -> dict[str, Any]:
    return {"versions": versions(), "argv": scrub(sys.argv), "cwd": os.getcwd()}
