"""`dataforge merge`: put `--shard i/n` outputs back together in the unsharded order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def merge(
    parts: Annotated[list[Path], typer.Argument(help="Run directories of `dataforge run --shard i/n`, or their "
                                                "stage output files (with the .order.json beside each).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Merged run directory (for run directories) "
                                         "or merged JSONL file (for files).")],
) -> None:
    """Merge shard outputs in the deterministic order one unsharded run writes. Merged run directories
    can be resumed with `dataforge run PIPELINE --run-dir OUTPUT` to do the global stages."""
    from ..pipeline.merge import merge as do_merge
    from ._common import print_summary

    summary = do_merge(list(parts), output)
    print_summary(summary, title=f"merged into {output}")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
