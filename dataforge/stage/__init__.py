"""The stage contract: a stage is a config plus `process` plus `finish`; `run_stage` does the rest.

    summary = run_stage(EvolveStage, "seeds.jsonl", "evolved.jsonl", EvolveConfig(rounds=2))

See `base` (the contract), `runner` (what it owns), `config` (how configs become options),
`sidefiles` (the names of every side file) and `summary` (the one summary shape). The runner and the
model meter load on first use, so that importing a stage's config (every command does, for its
options) stays cheap.
"""

from typing import Any

from .base import Stage, StageContext
from .config import Cli, InputConfig, IOConfig, StageConfig
from .journal import StageJournal
from .outputs import Outputs
from .sidefiles import SideFiles
from .summary import StageSummary, Tokens
from .work import LocalMapper, Work

_LAZY = {"run_stage": "runner", "RequestsFailed": "runner", "journal_header": "runner",
         "MeteredLLM": "meter", "operation": "meter", "tally": "meter"}

__all__ = ["Stage", "StageContext", "StageJournal", "Cli", "InputConfig", "IOConfig", "StageConfig", "Outputs",
           "SideFiles", "StageSummary", "Tokens", "Work", "LocalMapper", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
