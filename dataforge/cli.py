"""The `dataforge` command. Each subcommand lives in `dataforge/commands/<name>.py` and exposes
`register(app)`; modules import their heavy dependencies inside the command so `--help` stays fast."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer
from typer.core import TyperCommand

from . import __version__, commands
from .errors import DataforgeError


class _Command(TyperCommand):
    """Usage lines name arguments as they are documented (``dataforge filter [OPTIONS] IN``), not
    ``{input}`` as typer writes a required argument's Python name."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [p.replace("{", "").replace("}", "").upper() if p.startswith("{") else p
                for p in super().collect_usage_pieces(ctx)]

app = typer.Typer(
    name="dataforge",
    help="Manufacture instruction-tuning data (Self-Instruct, Evol-Instruct, quality gate, curation) and train on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dataforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """dataforge: seeds in, trained model out."""


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(app)
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = _Command


_register_all()


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except DataforgeError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
