"""Adapters from pipeline stage kinds to the stage modules' `<Stage>Config` + `run_<stage>` pairs.

The engine only knows this registry: what to import, whether a stage is record-parallel (can run
on a shard of the records and be merged back), whether it talks to a model (gets the shared LLM,
its prompts count in the done-check), and whether Ray may fan out its record batches.
Stage modules are imported on first use so `dataforge --help` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from ..errors import DataforgeError


@dataclass(frozen=True)
class StageAdapter:
    kind: str
    modules: tuple[str, ...]  # where to look, first match wins
    config_name: str
    func_name: str
    record_parallel: bool  # each record's outputs depend on that record alone (shard/merge, Ray batches)
    uses_llm: bool
    fan_out: bool = False  # a generation stage Ray may split into record batches
    output_name: str = "records.jsonl"  # inside the stage folder; a folder name for train
    output_is_dir: bool = False
    llm_switch: str | None = None  # uses the model only when this config flag is true (balance's name_topics)

    def _module(self):
        errors = []
        for name in self.modules:
            try:
                mod = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                    errors.append(f"{name} not found")
                    continue
                raise
            if hasattr(mod, self.config_name) and hasattr(mod, self.func_name):
                return mod
            errors.append(f"{name} has no {self.config_name}/{self.func_name}")
        raise DataforgeError(f"stage {self.kind!r} is not available in this install ({'; '.join(errors)})")

    def config_class(self) -> type[BaseModel]:
        return getattr(self._module(), self.config_name)

    def function(self) -> Callable[..., dict]:
        return getattr(self._module(), self.func_name)

    def needs_llm(self, cfg: BaseModel) -> bool:
        if self.llm_switch:
            return bool(getattr(cfg, self.llm_switch, False))
        return self.uses_llm

    def fill_defaults(self, fields: dict[str, Any], header: Any) -> dict[str, Any]:
        """The pipeline-wide seed goes to every stage that has a seed and did not set its own."""
        cls = self.config_class()
        if "seed" in cls.model_fields and "seed" not in fields:
            fields = {**fields, "seed": header.seed}
        return fields

    def run(self, input_path: Path, output_path: Path, cfg: BaseModel, *, llm=None, progress: bool = True) -> dict:
        fn = self.function()
        kwargs: dict[str, Any] = {"progress": progress}
        params = inspect.signature(fn).parameters
        if "llm" in params:
            kwargs["llm"] = llm
        if "progress" not in params:
            kwargs.pop("progress")
        summary = fn(input_path, output_path, cfg, **kwargs)
        return dict(summary or {})


_REGISTRY: dict[str, StageAdapter] = {
    a.kind: a
    for a in (
        StageAdapter("self-instruct", ("dataforge.generate.self_instruct",), "SelfInstructConfig",
                     "run_self_instruct", record_parallel=False, uses_llm=True),
        StageAdapter("evolve", ("dataforge.generate.evolve",), "EvolveConfig", "run_evolve",
                     record_parallel=True, uses_llm=True, fan_out=True),
        StageAdapter("filter", ("dataforge.quality.gate", "dataforge.quality.filter", "dataforge.quality"),
                     "FilterConfig", "run_filter", record_parallel=False, uses_llm=True),
        StageAdapter("balance", ("dataforge.curate.balance", "dataforge.curate"), "BalanceConfig", "run_balance",
                     record_parallel=False, uses_llm=True, llm_switch="name_topics"),
        StageAdapter("export", ("dataforge.pipeline.export",), "ExportConfig", "run_export",
                     record_parallel=True, uses_llm=False),
        StageAdapter("train", ("dataforge.train", "dataforge.train.trainer"), "TrainConfig", "run_train",
                     record_parallel=False, uses_llm=False, output_name="model", output_is_dir=True),
    )
}
# the name people type on the command line works too
_ALIASES = {"self_instruct": "self-instruct", "gate": "filter", "quality": "filter", "evol": "evolve"}


def stage_kinds() -> list[str]:
    return list(_REGISTRY) + list(_ALIASES)


def get_adapter(kind: str) -> StageAdapter:
    kind = _ALIASES.get(kind, kind)
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise DataforgeError(f"unknown stage {kind!r} (known: {', '.join(_REGISTRY)})") from None


def canonical_kind(kind: str) -> str:
    return _ALIASES.get(kind, kind)
