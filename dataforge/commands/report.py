"""`dataforge report`: one self-contained HTML page with plots of a (balanced) corpus."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import FormatOpt, SeedOpt, print_summary


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        input: str = typer.Argument(..., help="Records to report on (e.g. the output of `dataforge balance`)."),
        output: str = typer.Option(..., "-o", "--output", help="HTML file to write."),
        before: Optional[str] = typer.Option(None, "--before", help="The file before balancing, for the "
                                             "before/after complexity plot.", show_default=False),
        rejected: Optional[str] = typer.Option(None, "--rejected", help="Dropped records (default: "
                                               "<in>.rejected.jsonl if present).", show_default=False),
        stats: Optional[str] = typer.Option(None, "--stats", help="Stats file for topic labels (default: "
                                            "<in>.stats.json if present).", show_default=False),
        title: Optional[str] = typer.Option(None, "--title", help="Page title.", show_default=False),
        examples: int = typer.Option(3, "--examples", min=0, help="Example records per topic."),
        max_points: int = typer.Option(5000, "--max-points", min=100, help="Points on the embedding map."),
        no_map: bool = typer.Option(False, "--no-map", help="Skip the embedding map (faster; records without topics are still clustered)."),
        embedder: Optional[str] = typer.Option(None, "--embedder", help="Local sentence-transformers folder.",
                                               show_default=False),
        format: FormatOpt = "auto",
        seed: SeedOpt = 0,
    ) -> None:
        """Write one self-contained HTML report (plots embedded as PNG): topic map, topic sizes, complexity
        before/after balancing, statuses and rejection reasons, lengths, lineage, examples per topic."""
        from ..curate.report import ReportConfig, run_report

        cfg = ReportConfig(before_path=before, rejected_path=rejected, stats_path=stats, title=title,
                           examples=examples, max_points=max_points, embedding_map=not no_map, embedder=embedder,
                           in_format=format, seed=seed)
        print_summary(run_report(input, output, cfg), title="report")
