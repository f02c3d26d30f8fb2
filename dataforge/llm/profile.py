"""Which prompt profile a model gets, and why: the choice follows the evidence.

Small models (a few hundred million parameters) follow few-shot completion prompts better than
meta-instructions; every capable chat model wants `chat`. Guessing wrong is costly both ways: a hosted
chat model sent few-shot prompts gets them on `/v1/completions`, which hosted APIs refuse. So, in order:

1. an explicit ``--profile``;
2. what the server says: llama.cpp's server reports ``meta.n_params`` in ``/v1/models`` and
   ``model_path`` in ``/props``; vLLM reports the model's path or hub id as ``root`` in ``/v1/models``;
   a local GGUF names its size in its metadata (``general.size_label``);
3. a conservative name rule: an explicit parameter count under one billion (``135M``, ``0.5B``) or a
   known small family (SmolLM, TinyLlama, GPT-2). Never a substring like ``mini``: ``gpt-4o-mini``,
   ``o4-mini``, ``gemini-*``, ``Phi-3-mini`` (3.8B) and ``Ministral`` (8B) are capable chat models;
4. otherwise ``chat``.

`Decision.reason` says which rule decided; summaries and run manifests record it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

SMALL_PARAMS = 1_000_000_000  # below this, few-shot prompts work better than instructions
SMALL_FAMILY_CAP = 1_500_000_000  # a known small family stays few-shot up to here (TinyLlama-1.1B; not SmolLM2-1.7B)

# A parameter count in a model name: "135M", "0.5B", "1.7b", "8x7B" (the count after the x); not "4k" or "v2".
_COUNT = re.compile(r"(?<![a-z0-9.])(?:\d+x)?(\d+(?:\.\d+)?)\s*([mb])(?![a-z0-9])", re.I)
# Known small families, matched as whole name parts (a count in the name, when present, wins).
_SMALL_FAMILY = re.compile(r"(?i)(?:^|[/_\-\s.])(smollm\d*|tinyllama|tinystories|distilgpt2|gpt2(?:-medium|-large|-xl)?)"
                           r"(?=$|[/_\-\s.])")


@dataclass(frozen=True)
class Decision:
    profile: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"profile": self.profile, "reason": self.reason}


def parameter_count(name: str | None) -> float | None:
    """The parameter count written in a model name ("SmolLM2-135M" → 135e6), or None."""
    if not name:
        return None
    m = _COUNT.search(name.rsplit("/", 1)[-1]) or _COUNT.search(name)
    if not m:
        return None
    value = float(m.group(1))
    return value * (1e6 if m.group(2).lower() == "m" else 1e9)


def by_name(name: str | None) -> Decision | None:
    """The name rule alone; None when the name says nothing either way."""
    if not name:
        return None
    count = parameter_count(name)
    family = _SMALL_FAMILY.search(name)
    if family and (count is None or count < SMALL_FAMILY_CAP):
        sized = f" ({_human(count)})" if count else ""
        return Decision("fewshot", f"name {name!r} is of the small {family.group(1)} family{sized}")
    if count is not None:
        small = count < SMALL_PARAMS
        return Decision("fewshot" if small else "chat", f"name {name!r} says {_human(count)} parameters")
    return None


def by_size(params: float, source: str) -> Decision:
    small = params < SMALL_PARAMS
    return Decision("fewshot" if small else "chat", f"{source} reports {_human(params)} parameters")


def _human(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def decide(explicit: str | None, evidence: Iterable[Decision | None], name: str | None, remote: bool) -> Decision:
    """The first conclusive piece of evidence, in the order of the module docstring."""
    if explicit:
        return Decision(explicit, "--profile")
    for d in evidence:
        if d is not None:
            return d
    d = by_name(name)
    if d is not None:
        return d
    return Decision("chat", "remote server, model size unknown" if remote else "model size unknown")


# ---------------------------------------------------------------------------------- what servers say

def from_models_listing(data: dict[str, Any] | None, model: str | None) -> Decision | None:
    """Evidence from a `/v1/models` reply: llama.cpp's ``meta.n_params``, vLLM's ``root`` path."""
    entries = [e for e in (data or {}).get("data") or [] if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("id") == model), entries[0] if entries and not model else None)
    if entry is None:
        return None
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for key in ("n_params", "num_parameters", "parameters"):
        value = meta.get(key, entry.get(key))
        if isinstance(value, (int, float)) and value > 0:
            return by_size(float(value), "the server's /v1/models")
    root = entry.get("root")
    if isinstance(root, str) and root and root != entry.get("id"):
        d = by_name(root)
        if d is not None:
            return Decision(d.profile, f"the server serves {root!r}: {d.reason.split(' ', 2)[-1]}")
    return None


def from_props(props: dict[str, Any] | None) -> Decision | None:
    """Evidence from llama.cpp's `/props` (``model_path``)."""
    path = (props or {}).get("model_path")
    if isinstance(path, str) and path:
        d = by_name(path.rsplit("/", 1)[-1])
        if d is not None:
            return Decision(d.profile, f"the server's /props model_path {path.rsplit('/', 1)[-1]!r}: "
                                       f"{d.reason.split(' ', 2)[-1]}")
    return None


def probe_server(base_url: str, model: str | None, headers: dict[str, str], timeout: float
                 ) -> tuple[list[Decision | None], list[str]]:
    """Ask the server about its model (`/v1/models`, then `/props`); returns (evidence, listed model ids).
    Never raises: a server that does not answer simply gives no evidence."""
    evidence: list[Decision | None] = []
    ids: list[str] = []
    base = base_url.rstrip("/")
    data = _get_json(f"{base}/models", headers, timeout)
    if isinstance(data, dict):
        ids = [e.get("id") for e in data.get("data") or [] if isinstance(e, dict) and e.get("id")]
        evidence.append(from_models_listing(data, model or (ids[0] if ids else None)))
    if not any(evidence):
        root = base[: -len("/v1")] if base.endswith("/v1") else base
        props = _get_json(f"{root}/props", headers, timeout)
        evidence.append(from_props(props if isinstance(props, dict) else None))
    return evidence, ids


def _get_json(url: str, headers: dict[str, str], timeout: float) -> Any:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own server URL
            return json.loads(resp.read(1 << 20) or b"null")
    except (OSError, ValueError, urllib.error.URLError):
        return None


def from_gguf(path: str) -> Decision | None:
    """Evidence from a GGUF file's metadata (``general.size_label``, e.g. "135M"), read without loading."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    try:
        reader = GGUFReader(path, "r")
        field = reader.fields.get("general.size_label")
        if field is None:
            return None
        label = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - an unreadable header is no evidence, the load reports real problems
        return None
    count = parameter_count(label)
    return by_size(count, f"the GGUF's general.size_label {label!r}") if count else None


def from_hf_config(model: str) -> Decision | None:
    """Evidence from a local model folder's config.json (an in-process vLLM model): its parameter count,
    estimated from the shapes as embeddings + 12·layers·hidden² (within ~10% for Llama-style models)."""
    import json
    from pathlib import Path

    path = Path(model) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    h, layers, vocab = cfg.get("hidden_size"), cfg.get("num_hidden_layers"), cfg.get("vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (h, layers, vocab)):
        return None
    return by_size(float(vocab * h + 12 * layers * h * h), f"{path.name} of {Path(model).name!r}")
