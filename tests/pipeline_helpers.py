"""Shared by the pipeline tests: a scripted OpenAI-protocol responder and output comparison.

The responder plays a model by reading the prompt the way a person would: it rewrites a task when
asked to evolve one (deterministically, so two runs agree), judges EQUAL/DIFFERENT when asked to
compare, and otherwise answers — with a short "sorry" for some tasks so elimination has work to do.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from dataforge.testing.loopback import last_user_message, prompt_of

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "examples" / "seeds.jsonl"
_TASK = re.compile(r"<<<\n(.*?)\n>>>", re.S)
_EXTRA = ["Explain the trade-offs involved.", "Give two concrete examples.", "Answer in at most five sentences.",
          "Show each reasoning step.", "Use a table for the comparison.", "Mention one common mistake."]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def scripted_responder(body: dict[str, Any]) -> str:
    text = last_user_message(body) if body.get("messages") else prompt_of(body)
    if "EQUAL or DIFFERENT" in text:
        return "DIFFERENT"
    task = _TASK.search(text)
    if task and ("Rewrite the task" in text or "brand-new task" in text or "Rewrite" in text):
        original = task.group(1).strip()
        if "brand-new task" in text:
            return f"Write a short guide about a rare hobby related to: {original.split()[0].lower()} " \
                   f"(variant {_h(original) % 97})."
        return f"{original} {_EXTRA[_h(original) % len(_EXTRA)]}"
    if _h(text) % 9 == 0:
        return "Sorry, I cannot do that."
    words = ["The", "answer", "covers", "the", "main", "points", "with", "care", "and", "detail"]
    n = 40 + _h(text) % 30
    return " ".join(words[i % len(words)] for i in range(n)) + f" (ref {_h(text) % 1000})."


def strip_volatile(obj: Any) -> Any:
    """A record without the fields that record *when* it was made (they differ between two runs)."""
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in ("timestamp", "seconds", "elapsed")}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [strip_volatile(json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def small_seeds(tmp_path: Path, n: int = 8) -> Path:
    lines = [line for line in SEEDS.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    p = tmp_path / f"seeds{n}.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p
