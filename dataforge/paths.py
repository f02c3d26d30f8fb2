"""Where the shipped resources live, installed (wheel) or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """`prompts`, `pipelines` or `examples`: packaged copy first, then the checkout's top-level folder."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dataforge resource folder {name!r} not found (broken install?)")


def default_cache_dir() -> Path:
    """User-level cache for requests and embeddings (override with DATAFORGE_CACHE_DIR)."""
    import os

    env = os.environ.get("DATAFORGE_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dataforge"
    base.mkdir(parents=True, exist_ok=True)
    return base
