"""Stage configs: one pydantic field per option, from which the command line, the pipeline YAML and the
docs all come (`dataforge.commands._options` builds the options), so help, defaults and validation
cannot drift apart.

A field is an option ``--field-name`` with its description as help and its default as the shown
default. `Cli` metadata (``Annotated[int, Field(...), Cli("-n", "--num")]``) changes what the command
line shows: other flags, a help panel, a default text for defaults that depend on the model, or
``hidden`` for fields only YAML and Python set. Fields of a nested config are options only where they
carry `Cli` metadata themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ..io import IN_FORMATS, OUT_FORMATS

InFormat = Literal[IN_FORMATS]  # type: ignore[valid-type]
OutFormat = Literal[OUT_FORMATS]  # type: ignore[valid-type]
IO_PANEL = "Input/output"


@dataclass(frozen=True)
class Cli:
    """How a config field shows on the command line (see the module doc)."""

    flags: tuple[str, ...] = ()
    panel: str | None = None
    default_text: str | None = None
    hidden: bool = False
    metavar: str | None = None

    def __init__(self, *flags: str, panel: str | None = None, default_text: str | None = None,
                 hidden: bool = False, metavar: str | None = None):
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "panel", panel)
        object.__setattr__(self, "default_text", default_text)
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "metavar", metavar)


class StageConfig(BaseModel):
    """Base of every stage config: unknown fields are errors (a typo in a YAML never vanishes)."""

    model_config = ConfigDict(extra="forbid")

    # how the runner reads the input and writes the main output; configs with the shared options
    # below override these
    def input_format(self) -> str:
        return "auto"

    def output_format(self) -> str:
        return "record"

    def strict_input(self) -> bool:
        return False

    def shard_spec(self) -> str | None:
        return None


class InputConfig(StageConfig):
    """The options every command that reads records shares, declared once."""

    format: Annotated[InFormat, Cli("--format", panel=IO_PANEL)] = Field(
        "auto", validation_alias=AliasChoices("format", "in_format"), description="input format (auto: detected)")
    strict: Annotated[bool, Cli("--strict", panel=IO_PANEL)] = Field(
        False, description="stop at the first bad input line instead of writing it to the bad-lines file")
    shard: Annotated[Optional[str], Cli("--shard", panel=IO_PANEL, metavar="I/N")] = Field(
        None, description="process only shard i of n (\"i/n\", by record id), for parallel workers")

    def input_format(self) -> str:
        return self.format

    def strict_input(self) -> bool:
        return self.strict

    def shard_spec(self) -> str | None:
        return self.shard


class IOConfig(InputConfig):
    """The input/output options record stages share, declared once."""

    out_format: Annotated[OutFormat, Cli("--to", "--out-format", panel=IO_PANEL)] = Field(
        "record", description="format of the output file")

    def output_format(self) -> str:
        return self.out_format
