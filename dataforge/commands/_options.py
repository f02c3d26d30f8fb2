"""Command-line options generated from pydantic configs, so help, defaults and validation cannot drift.

Each config field becomes ``--field-name`` (or the flags its `Cli` metadata names) with the field's
description as help and its default (or `Cli.default_text`) as the shown default. Every generated
option's own default is None ("not given"): the config's default then applies, so there is one
default, in the config. Values are validated by the config itself; an error names the flag.

    @config_command(app, "convert", ConvertConfig)
    def convert(input_path: Path = typer.Argument(...), *, cfg: ConvertConfig) -> None: ...

The backend options (``--base-url``, ``--model``, ...) are declared once, here, from `BackendConfig`;
a command that talks to a model adds ``backend=True`` and receives the options given as a dict.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import typer
from pydantic import BaseModel, ValidationError

from ..errors import DataforgeError
from ..stage.config import Cli

BACKEND_PANEL = "Backend"
COST_PANEL = "Cost and budget"
BUDGET_EXIT = 3  # the exit status of a run its budget stopped (clean and resumable, but not the whole job)
# BackendConfig field -> how it shows on the command line (extra help after the field's description)
BACKEND_OPTIONS = {
    "backend": Cli("--backend"),
    "base_url": Cli("--base-url", default_text="env OPENAI_BASE_URL; the key comes from OPENAI_API_KEY"),
    "model": Cli("--model", default_text="env DATAFORGE_MODEL, else the server's first model"),
    "local_model": Cli("--local-model", default_text="env DATAFORGE_LOCAL_MODEL, else embedded SmolLM2-135M-Instruct"),
    "n_threads": Cli("--threads", default_text="all cores when the machine is idle, CPUs - 1 when busy; at most 8"),
    "concurrency": Cli("--concurrency"),
    "timeout": Cli("--timeout"),
    "max_retries": Cli("--max-retries"),
    "rpm": Cli("--rpm"),
    "tpm": Cli("--tpm"),
    "cache_path": Cli("--cache", default_text="$DATAFORGE_CACHE_DIR/requests.sqlite"),
    "no_cache": Cli("--no-cache"),
    "profile": Cli("--profile", default_text="by evidence: the server's model size, then the name"),
    "keep_reasoning": Cli("--keep-reasoning"),
}


def cost_options(hidden: bool = False) -> dict[str, Any]:
    """The typer options of prices, budgets and --dry-run, declared once for every model-calling command."""
    def opt(*flags: str, help: str, kind: Any = None) -> Any:
        return typer.Option(kind, *flags, help=help, rich_help_panel=COST_PANEL, hidden=hidden)

    return {
        "price_in": opt("--price-in", help="Dollars per million prompt tokens (for costs in the summary, the dry "
                        "run and --budget-usd; dataforge keeps no price list)."),
        "price_out": opt("--price-out", help="Dollars per million completion tokens."),
        "budget_tokens": opt("--budget-tokens", help="Stop cleanly once the job has used this many tokens (all "
                             "attempts together); what is finished is written and journaled, and a re-run with a "
                             "larger budget resumes. Exit status 3."),
        "budget_usd": opt("--budget-usd", help="Stop cleanly once the job has cost this many dollars (needs "
                          "--price-in and --price-out); as --budget-tokens."),
        "dry_run": typer.Option(False, "--dry-run", help="Run a small real sample against the model and print the "
                                "projected requests, tokens, wall time and cost of the whole job; write nothing "
                                "else.", rich_help_panel=COST_PANEL, hidden=hidden),
    }


@dataclass
class Option:
    """One generated option: the config field it sets (a path into nested configs) and how it shows."""

    name: str  # the python parameter name, unique in the command
    path: tuple[str, ...]
    flags: tuple[str, ...]
    annotation: Any
    help: str
    panel: str | None
    shown_default: str | None
    is_list: bool
    metavar: str | None

    def parameter(self) -> inspect.Parameter:
        # the option's own default stays None ("not given", so the config's default applies); the help
        # shows the config's default the way typer shows one (escaped: rich would read it as markup)
        from rich.markup import escape

        help_text = escape(self.help)     # a help text naming [INST]/[/INST] is not markup
        text = f"{help_text} \\[default: {self.shown_default}]" if self.shown_default is not None else help_text
        opt = typer.Option(None, *self.flags, help=text, rich_help_panel=self.panel, metavar=self.metavar,
                           show_default=False)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=self.annotation)


def _cli(field: Any) -> Cli | None:
    return next((m for m in field.metadata if isinstance(m, Cli)), None)


def _unwrap(annotation: Any) -> Any:
    """The type under Optional[...]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def show_default(value: Any) -> str | None:
    """How a config default reads on the command line (None: nothing to show)."""
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _help(description: str | None) -> str:
    text = (description or "").strip()
    if text and not text.endswith((".", ")")):
        text += "."
    return text[:1].upper() + text[1:]


def config_options(cls: type[BaseModel], *, panel: str | None = None, path: tuple[str, ...] = (),
                   only: dict[str, Cli] | None = None, nested: bool = False,
                   panels: dict[str, str] | None = None) -> list[Option]:
    """The options of config class `cls`: every field (hidden ones and dict-valued ones aside); fields of a
    nested config only where they carry `Cli` metadata. `only` picks fields and gives their looks;
    `panels` puts fields without a `Cli` panel into a help panel by name."""
    options = []
    for name, field in cls.model_fields.items():
        cli = only.get(name) if only is not None else _cli(field)
        if (only is not None and cli is None) or (cli is not None and cli.hidden) or (nested and cli is None):
            continue
        kind = _unwrap(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            options += config_options(kind, panel=panel, path=(*path, name), nested=True)
            continue
        origin = typing.get_origin(kind)
        if origin is dict or kind is dict:
            continue  # set in YAML or Python, not on the command line
        is_list = origin is list
        default = field.get_default(call_default_factory=True)
        if is_list:
            flag_type: Any = list[str]
        elif origin is Literal:
            flag_type = kind
        else:
            flag_type = kind
        flags = cli.flags if cli is not None and cli.flags else ()
        if not flags:
            dashed = "--" + name.replace("_", "-")
            flags = (f"{dashed}/--no-{dashed[2:]}",) if flag_type is bool else (dashed,)
        help_text = _help(field.description) + (" Comma-separated, or repeat the option." if is_list else "")
        shown = cli.default_text if cli is not None and cli.default_text else show_default(default)
        where = (cli.panel if cli is not None and cli.panel else None) or (panels or {}).get(name) or panel
        options.append(Option("__".join((*path, name)), (*path, name), flags, Optional[flag_type], help_text,
                              where, shown, is_list, cli.metavar if cli is not None else None))
    return options


def backend_options() -> list[Option]:
    """The shared backend options, from `BackendConfig` (declared once, for every command)."""
    from ..llm import BackendConfig

    return [o for o in config_options(BackendConfig, panel=BACKEND_PANEL, only=BACKEND_OPTIONS)]


def _value(opt: Option, raw: Any) -> Any:
    if opt.is_list:  # "a,b" and repeated options alike
        return [part.strip() for item in raw for part in str(item).split(",") if part.strip()]
    return raw


def values_for(options: list[Option], given: dict[str, Any]) -> dict[str, Any]:
    """The given (not None) option values as nested config fields."""
    fields: dict[str, Any] = {}
    for opt in options:
        raw = given.get(opt.name)
        if raw is None:
            continue
        target = fields
        for part in opt.path[:-1]:
            target = target.setdefault(part, {})
        target[opt.path[-1]] = _value(opt, raw)
    return fields


def config_error(exc: ValidationError, options: list[Option] = ()) -> DataforgeError:
    """A pydantic error from building a config, as one line that names the command-line flag."""
    flag_of = {opt.path: opt.flags[0].split("/")[0] for opt in options}
    parts = []
    for e in exc.errors():
        loc = tuple(str(x) for x in e.get("loc", ()))
        where = flag_of.get(loc) or (".".join(loc) if loc else "")
        parts.append(f"{where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}")
    return DataforgeError("; ".join(parts) or str(exc))


def build(cls: type[BaseModel], options: list[Option], given: dict[str, Any], base: dict[str, Any] | None = None):
    """`cls` from the options given (over `base`), or a DataforgeError naming the flag."""
    try:
        return cls.model_validate({**(base or {}), **values_for(options, given)})
    except ValidationError as exc:
        raise config_error(exc, options) from None


def backend_config(given: dict[str, Any]):
    """A `BackendConfig` from the backend options given over the environment (an error names the flag)."""
    from ..llm import BackendConfig

    env = BackendConfig.from_env().model_dump(exclude_unset=True)
    try:
        return BackendConfig.model_validate({**env, **given})
    except ValidationError as exc:
        raise config_error(exc, backend_options()) from None


def config_command(app: typer.Typer, name: str, cls: type[BaseModel] | None, *, backend: bool = False,
                   help: str | None = None, panels: dict[str, str] | None = None,
                   base: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Callable[[Callable], Callable]:
    """Register `fn` as command `name` with `cls`'s options (and the backend options) appended to its own
    parameters. `fn` receives ``cfg`` (the validated config: `base(fn's own arguments)` with the options
    given over it) and, with ``backend=True``, ``backend`` (the backend options given, as a dict)."""
    own = config_options(cls, panels=panels) if cls is not None else []
    shared = backend_options() if backend else []

    def decorate(fn: Callable) -> Callable:
        fixed = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("cfg", "backend")]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            given = {o.name: kwargs.pop(o.name) for o in own + shared}
            extra: dict[str, Any] = {}
            if cls is not None:
                extra["cfg"] = build(cls, own, given, base(kwargs) if base is not None else None)
            if backend:
                extra["backend"] = values_for(shared, given)
            return fn(**kwargs, **extra)

        params = fixed + [o.parameter() for o in own + shared]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        # typer reads types from __annotations__ before the signature: functools.wraps copied fn's, whose
        # `backend: dict` would make --backend a dictionary option that refuses every value
        command.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not p.empty}
        command.__dataforge_options__ = (cls, own, shared)  # type: ignore[attr-defined]  # for the help test
        app.command(name, help=help or fn.__doc__)(command)
        return fn
    return decorate
