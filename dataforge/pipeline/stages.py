"""The stage registry: every stage kind a pipeline YAML, the command line and Ray workers know.

The engine knows stages only through this table and the `Stage` class each line names: whether it is
record-parallel (shards, Ray batches), whether it talks to a model, where its output goes, what else
it reads and writes. Adding a stage is one config class, one `Stage` subclass and one line here; its
`dataforge <kind>` command is generated from the config (`dataforge/commands/stages.py`).
Stage modules are imported on first use so `dataforge --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import DataforgeError

if TYPE_CHECKING:
    from ..stage import Stage

STAGES = {
    "self-instruct": "dataforge.generate.self_instruct:SelfInstructStage",
    "evolve": "dataforge.generate.evolve:EvolveStage",
    "magpie": "dataforge.generate.magpie:MagpieStage",
    "converse": "dataforge.generate.converse:ConverseStage",
    "pairs": "dataforge.generate.pairs:PairsStage",
    "filter": "dataforge.quality.gate:FilterStage",
    "decontaminate": "dataforge.quality.decontaminate:DecontaminateStage",
    "balance": "dataforge.curate.balance:BalanceStage",
    "export": "dataforge.curate.export:ExportStage",
    "train": "dataforge.train.stage:TrainStage",
}
# the names people also type
ALIASES = {"self_instruct": "self-instruct", "gate": "filter", "quality": "filter", "evol": "evolve"}


def stage_kinds() -> list[str]:
    return list(STAGES) + list(ALIASES)


def canonical_kind(kind: str) -> str:
    return ALIASES.get(kind, kind)


def stage_class(kind: str) -> type["Stage"]:
    """The `Stage` subclass registered for `kind` (or one of its aliases)."""
    kind = canonical_kind(kind)
    if kind not in STAGES:
        raise DataforgeError(f"unknown stage {kind!r} (known: {', '.join(STAGES)})")
    module, name = STAGES[kind].split(":")
    return getattr(importlib.import_module(module), name)
