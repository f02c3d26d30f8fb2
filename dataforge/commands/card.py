"""`dataforge card` (a Hugging Face dataset card for a dataset) and `dataforge push` (the dataset as Parquet
plus its card to the Hub); see dataforge/curate/card.py and publish.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_CARD = "Card"
Dataset = Annotated[Path, typer.Argument(metavar="DATASET", help="The records (any format dataforge reads).")]
License = Annotated[str, typer.Option("--license", help="The data's licence, a Hub licence id (apache-2.0, "
                                      "cc-by-4.0, ...); it depends on the seeds and the model's terms.",
                                      rich_help_panel=_CARD)]
Name = Annotated[Optional[str], typer.Option("--name", help="The card's title (default: from the file name).",
                                             rich_help_panel=_CARD)]
Manifest = Annotated[Optional[Path], typer.Option("--manifest", help="A pipeline's run directory or its "
                                                  "manifest.json: stages, removals by reason, tokens, cost.",
                                                  rich_help_panel=_CARD)]


def card(
    dataset: Dataset,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where the card goes (usually README.md).")],
    license: License = "unknown",
    name: Name = None,
    manifest: Manifest = None,
    data_files: Annotated[Optional[str], typer.Option("--data-files", help="Path or glob of the data files as "
                                                      "the card's configs name them, relative to the card "
                                                      "(default: the dataset's file name).",
                                                      rich_help_panel=_CARD)] = None,
    repo_id: Annotated[Optional[str], typer.Option("--repo-id", help="The Hub repo it will live in (for the "
                                                   "loading example).", rich_help_panel=_CARD)] = None,
) -> None:
    """Write a Hugging Face dataset card for DATASET: YAML metadata (licence, task, size, languages, configs),
    what the data is, how it was generated, lineage, the gate's statistics, what was removed and why, known
    limitations and how to load it; every figure counted from the records (and the manifest)."""
    from ..curate.card import CardOptions, dataset_card
    from ..io import write_text_atomic

    opts = CardOptions(license=license, pretty_name=name, repo_id=repo_id, data_files=data_files or dataset.name)
    write_text_atomic(output, str(dataset_card(dataset, opts, manifest)).rstrip("\n") + "\n")
    typer.echo(f"card: {output}", err=True)


def push(
    dataset: Dataset,
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="namespace/name of the dataset repo.")],
    license: License = "unknown",
    name: Name = None,
    manifest: Manifest = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    token_env: Annotated[str, typer.Option("--token-env", help="Environment variable that holds the Hub token "
                                           "(else huggingface_hub's own login).")] = "HF_TOKEN",
    message: Annotated[Optional[str], typer.Option("--message", help="The commit message.")] = None,
) -> None:
    """Upload DATASET to the Hugging Face Hub as Parquet (data/train-00000-of-00001.parquet) with its card
    (README.md), creating the dataset repo REPO_ID if needed; prints the repo's URL."""
    from ..curate.card import CardOptions
    from ..curate.publish import push_dataset

    pushed = push_dataset(dataset, repo_id, CardOptions(license=license, pretty_name=name), manifest=manifest,
                          private=private, token_env=token_env, message=message)
    typer.echo(pushed.url)
    typer.echo(f"pushed {pushed.records:,} records: {pushed.commit_url}", err=True)


def register(app: typer.Typer) -> None:
    app.command("card")(card)
    app.command("push")(push)
