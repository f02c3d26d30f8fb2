"""Declarative batch jobs: `dataforge run pipelines/NAME.yaml` chains the stages under a run
directory with a manifest, resumes after a crash, redoes only what changed, and shards or fans out
to Ray for scale. The engine loads on first use: the registry (`stages`) is all a command needs."""

from typing import Any

_LAZY = {"Engine": "engine", "RunOptions": "engine", "run_pipeline": "engine", "PipelineSpec": "spec",
         "find_pipeline": "spec", "load_pipeline": "spec", "parse_pipeline": "spec"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
