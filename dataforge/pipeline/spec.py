"""The pipeline YAML and its validation.

A pipeline file names an input, an optional backend, optional Ray settings and a list of stages;
each stage item is ``stage: <kind>`` plus that stage's config fields (the same names as its CLI
options). Every problem is reported as a `DataforgeError` naming the file and the line, found through
the YAML node marks, so a typo in line 23 says "line 23" rather than "stages.2.rounds".
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import DataforgeError
from ..paths import resource_dir
from ..stage.budget import Prices

# stage options the engine decides for every stage (a stage setting them would break chaining)
_ENGINE_OWNED = {
    "shard": "use `dataforge run --shard i/n`",
    "out_format": "stages hand Records to each other; choose the format in an `export` stage",
}

# keys a stage item may carry besides its config fields
STAGE_KEYS = ("stage", "name", "input")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class RaySettings(BaseModel):
    """Where generation batches go: a Ray cluster and one backend endpoint per worker."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field("local", description="Ray address ('auto', 'ray://host:10001', or 'local' to start one here)")
    endpoints: list[str] = Field(default_factory=list,
                                 description="OpenAI-compatible base URLs, one per worker (empty: the backend's own)")
    workers: int | None = Field(None, ge=1, description="number of workers (default: one per endpoint, else 2)")
    batch_size: int = Field(32, ge=1, description="records per Ray task")
    num_cpus: float = Field(1.0, gt=0, description="CPUs each worker reserves")
    local_cpus: int | None = Field(None, ge=1, description="CPUs for a local instance (address: local)")


class JobBudget(BaseModel):
    """Where the whole job stops (all stages and attempts together); --budget-tokens/--budget-usd override."""

    model_config = ConfigDict(extra="forbid")

    tokens: int | None = Field(None, ge=1, description="stop once the job has used this many tokens")
    usd: float | None = Field(None, gt=0, description="stop once the job has cost this many dollars (needs prices)")


class PipelineHeader(BaseModel):
    """Everything in the YAML except the stage list."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="job name; the default run directory is runs/<name>")
    description: str = ""
    input: str | None = Field(None, description="input file or HF dataset folder; relative to the YAML, else the CWD")
    run_dir: str | None = Field(None, description="where outputs and the manifest go (default runs/<name>, CWD-relative)")
    seed: int = Field(0, description="seed handed to every stage that has one")
    backend: dict[str, Any] = Field(default_factory=dict,
                                    description="BackendConfig fields (backend, base_url, model, ...); env fills the rest")
    judge: dict[str, Any] = Field(default_factory=dict,
                                  description="BackendConfig fields for the filter stages' judge model (merged over "
                                  "`backend`), so generator and judge can differ; empty: the generator judges")
    ray: RaySettings | None = None
    prices: Prices | None = Field(None, description="dollars per million tokens: {input: prompt, output: completion}")
    budget: JobBudget | None = None


@dataclass
class StageItem:
    """One validated stage of a pipeline."""

    kind: str
    name: str
    config: BaseModel
    input: str | None = None  # another stage's name, or a path (None: the previous stage's output)
    line: int = 0


@dataclass
class PipelineSpec:
    path: Path | None
    header: PipelineHeader
    stages: list[StageItem]
    raw: dict[str, Any] = field(default_factory=dict)
    text_hash: str = ""

    @property
    def name(self) -> str:
        return self.header.name

    def resolve(self, value: str | None) -> Path | None:
        """A path from the YAML: absolute as is; relative to the YAML's folder if it exists there, else the CWD."""
        if value is None:
            return None
        p = Path(os.path.expandvars(os.path.expanduser(value)))
        if p.is_absolute():
            return p
        if self.path is not None:
            beside = self.path.parent / p
            if beside.exists():
                return beside
        return Path.cwd() / p

    def stage(self, name: str) -> StageItem:
        for s in self.stages:
            if s.name == name:
                return s
        raise DataforgeError(f"no stage named {name!r} in {self.path or 'pipeline'} "
                             f"(stages: {', '.join(s.name for s in self.stages)})")

    def config_dump(self) -> dict[str, Any]:
        """The validated job as plain data (what the manifest records and hashes)."""
        return {
            "header": self.header.model_dump(mode="json"),
            "stages": [{"stage": s.kind, "name": s.name, "input": s.input,
                        "config": s.config.model_dump(mode="json")} for s in self.stages],
        }


# --------------------------------------------------------------------------- YAML with line numbers


class _Located:
    """Maps a key path (('stages', 2, 'rounds')) to the 1-based line of its YAML node."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}

    def line(self, path: tuple, default: int = 1) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), default)


def _to_python(node: yaml.Node, loc: _Located, path: tuple, where: str) -> Any:
    loc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _to_python(key_node, _Located(), (), where)
            if key in out:
                raise DataforgeError(f"{where}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            out[key] = _to_python(value_node, loc, (*path, key), where)
            loc.lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, loc, (*path, i), where) for i, v in enumerate(node.value)]
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _compose(text: str, where: str) -> tuple[Any, _Located]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise DataforgeError(f"{where}:{line}: not valid YAML: {exc.problem or exc}") from None
    loc = _Located()
    if node is None:
        raise DataforgeError(f"{where}:1: the pipeline file is empty")
    return _to_python(node, loc, (), where), loc


def _pydantic_errors(exc: ValidationError, loc: _Located, base: tuple, where: str) -> DataforgeError:
    msgs = []
    for err in exc.errors():
        key_path = tuple(err["loc"])
        line = loc.line((*base, *key_path))
        dotted = ".".join(map(str, key_path)) or "(item)"
        if err["type"] == "extra_forbidden":
            msgs.append(f"{where}:{line}: unknown field {dotted!r}")
        elif err["type"] == "missing":
            msgs.append(f"{where}:{loc.line(base)}: missing required field {dotted!r}")
        else:
            msgs.append(f"{where}:{line}: {dotted}: {err['msg']} (got {err.get('input')!r})")
    return DataforgeError("\n".join(msgs))


# --------------------------------------------------------------------------- loading


def find_pipeline(name_or_path: str | os.PathLike) -> Path:
    """A path as given, or a bare name (`alpaca_bootstrap`) looked up in ./pipelines and the shipped ones."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    candidates = []
    if p.suffix not in (".yaml", ".yml") and len(p.parts) == 1:
        names = [f"{p.name}.yaml", f"{p.name}.yml"]
        for folder in (Path.cwd() / "pipelines", _shipped()):
            if folder is not None:
                candidates += [folder / n for n in names]
    elif len(p.parts) >= 1 and not p.is_absolute():
        shipped = _shipped()
        if shipped is not None:
            candidates.append(shipped / p.name)
    for c in candidates:
        if c.is_file():
            return c
    raise DataforgeError(f"{name_or_path}: no such pipeline file (shipped pipelines: "
                         f"{', '.join(shipped_pipelines()) or 'none'})")


def _shipped() -> Path | None:
    try:
        return resource_dir("pipelines")
    except FileNotFoundError:
        return None


def shipped_pipelines() -> list[str]:
    folder = _shipped()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def load_pipeline(path: str | os.PathLike) -> PipelineSpec:
    """Read and validate a pipeline file; every error names the file and line."""
    p = find_pipeline(path)
    text = p.read_text(encoding="utf-8")
    return parse_pipeline(text, where=str(p), path=p)


def parse_pipeline(text: str, where: str = "<pipeline>", path: Path | None = None) -> PipelineSpec:
    from .stages import canonical_kind, stage_class, stage_kinds

    data, loc = _compose(text, where)
    if not isinstance(data, dict):
        raise DataforgeError(f"{where}:1: a pipeline is a mapping with 'name' and 'stages'")
    stages_raw = data.get("stages")
    header_raw = {k: v for k, v in data.items() if k != "stages"}
    try:
        header = PipelineHeader.model_validate(header_raw)
    except ValidationError as exc:
        raise _pydantic_errors(exc, loc, (), where) from None
    if stages_raw is None:
        raise DataforgeError(f"{where}:{loc.line(())}: missing required field 'stages' (a list of stages)")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise DataforgeError(f"{where}:{loc.line(('stages',))}: 'stages' must be a non-empty list")

    items: list[StageItem] = []
    seen: set[str] = set()
    for i, raw in enumerate(stages_raw):
        base = ("stages", i)
        line = loc.line(base)
        if not isinstance(raw, dict) or "stage" not in raw:
            raise DataforgeError(f"{where}:{line}: each stage needs 'stage: <kind>' "
                                 f"(one of {', '.join(stage_kinds())})")
        kind = raw["stage"]
        if kind not in stage_kinds():
            raise DataforgeError(f"{where}:{loc.line((*base, 'stage'))}: unknown stage {kind!r} "
                                 f"(known: {', '.join(stage_kinds())})")
        kind = canonical_kind(kind)
        name = str(raw.get("name") or kind)
        if not _NAME.match(name):
            raise DataforgeError(f"{where}:{loc.line((*base, 'name'))}: stage name {name!r} must be letters, "
                                 "digits, '_', '-', '.'")
        if name in seen:
            raise DataforgeError(f"{where}:{line}: two stages are named {name!r}; give one a 'name:'")
        seen.add(name)
        src = raw.get("input")
        if src is not None and not isinstance(src, str):
            raise DataforgeError(f"{where}:{loc.line((*base, 'input'))}: input must be a stage name or a path")
        fields = {k: v for k, v in raw.items() if k not in STAGE_KEYS}
        cfg_cls = stage_class(kind).Config
        for key, why in _ENGINE_OWNED.items():
            if key in fields and fields[key] not in (None, "record"):
                raise DataforgeError(f"{where}:{loc.line((*base, key))}: '{key}' is set by the pipeline, "
                                     f"not per stage: {why}")
        if "out_format" in cfg_cls.model_fields:
            fields = {**fields, "out_format": "record"}  # stages hand Records on, whatever a command's default
        if "seed" in cfg_cls.model_fields and "seed" not in fields:
            fields = {**fields, "seed": header.seed}  # the pipeline-wide seed, unless the stage sets its own
        try:
            cfg = cfg_cls.model_validate(fields)
        except ValidationError as exc:
            raise _pydantic_errors(exc, loc, base, where) from None
        except DataforgeError as exc:  # a config's own cross-field check
            raise DataforgeError(f"{where}:{line}: stage {name!r}: {exc}") from None
        items.append(StageItem(kind, name, cfg, src, line))

    names = [s.name for s in items]
    for idx, s in enumerate(items):
        if s.input is not None and s.input in names and names.index(s.input) >= idx:
            raise DataforgeError(f"{where}:{s.line}: stage {s.name!r} reads {s.input!r}, which runs later")
    if header.input is None and items and items[0].input is None and not stage_class(items[0].kind).input_optional:
        raise DataforgeError(f"{where}:{loc.line(())}: missing required field 'input' (the first stage reads it)")
    return PipelineSpec(path, header, items, data, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])
