"""The `dataforge` command. Each subcommand lives in `dataforge/commands/<name>.py` and exposes
`register(app)`; modules import their heavy dependencies inside the command so `--help` stays fast."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from . import __version__, commands
from .errors import DataforgeError

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


_register_all()


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except DataforgeError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
