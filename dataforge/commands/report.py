"""`dataforge report`: one self-contained HTML page with plots of a (balanced) corpus."""

from __future__ import annotations

import typer

from ..curate.report import ReportConfig
from ._common import print_summary
from ._options import config_command


def register(app: typer.Typer) -> None:
    @config_command(app, "report", ReportConfig)
    def report(
        input: str = typer.Argument(..., metavar="IN", help="Records to report on (e.g. the output of "
                                    "`dataforge balance`)."),
        output: str = typer.Option(..., "-o", "--output", help="HTML file to write."),
        *, cfg: ReportConfig,
    ) -> None:
        """Write one self-contained HTML report (plots embedded as PNG): topic map, topic sizes, complexity
        before/after balancing, statuses and rejection reasons, lengths, lineage, examples per topic."""
        from ..curate.report import run_report

        print_summary(run_report(input, output, cfg), title="report")
