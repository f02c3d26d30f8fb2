"""The quality gate: embeddings, per-record checks, Self-Refine, dedup and the accept/review/reject rules.

Kept import-light on purpose: heavy libraries (torch, sentence-transformers, datasketch) load inside the
modules that need them, when they are first used.
"""

from __future__ import annotations

__all__ = ["get_embedder"]


def get_embedder(model=None, cache_dir=None):
    """Shortcut for `dataforge.quality.embed.get_embedder` (see there)."""
    from .embed import get_embedder as _get

    return _get(model, cache_dir)
