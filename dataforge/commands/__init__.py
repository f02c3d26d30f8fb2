"""Subcommands of the `dataforge` CLI: one module each, discovered by `dataforge.cli`."""
