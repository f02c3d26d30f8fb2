"""`dataforge export-model RUN_DIR -o OUT`: a plain Hugging Face checkpoint from a trained model.

Merges a LoRA adapter; with --merge-mods folds the modifications that fold exactly and lists the rest as
not exportable (refused unless --drop-unfoldable). The export is loaded back and its logits compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("export-model")
    def export_model_cmd(
        run_dir: Path = typer.Argument(..., help="Run directory of `dataforge train` (or its model/ or best/)."),
        output: Path = typer.Option(..., "-o", "--output", help="Directory for the plain HF checkpoint."),
        merge_mods: bool = typer.Option(False, "--merge-mods", help="Fold the modifications that fold exactly "
                                        "(segment embedding with equal rows, no-op modules, heads that do not "
                                        "change the logits)."),
        drop_unfoldable: bool = typer.Option(False, "--drop-unfoldable", help="Write even when some modifications "
                                             "cannot be folded: they are dropped and the logit change reported."),
    ) -> None:
        """Export a trained model as a plain transformers checkpoint (adapters merged, modifications folded)."""
        from ..train.export import export_model

        result = export_model(run_dir, output, merge_mods=merge_mods, drop_unfoldable=drop_unfoldable)
        for title, key in (("folded", "folded"), ("dropped", "dropped"), ("NOT exportable", "not_exportable")):
            for name, why in result[key].items():
                typer.echo(f"{title:>15}: {name}: {why}", err=True)
        typer.echo(json.dumps(result, indent=2))
