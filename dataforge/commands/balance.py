"""`dataforge balance`: topic clusters + complexity levels -> a balanced corpus, every drop recorded."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import (BackendOpt, BaseUrlOpt, CacheOpt, FormatOpt, LocalModelOpt, ModelOpt, NoCacheOpt, ProfileOpt,
                      SeedOpt, StrictOpt, ThreadsOpt, ToOpt, backend_config_from_options, print_summary)

_C = "Curation"


def register(app: typer.Typer) -> None:
    @app.command("balance")
    def balance(
        input: str = typer.Argument(..., help="Records to balance (any supported format)."),
        output: str = typer.Option(..., "-o", "--output", help="Balanced records (kept)."),
        levels_target: Optional[str] = typer.Option(
            None, "--levels-target", help="Target share per complexity level, e.g. low=0.2,mid=0.5,high=0.3  "
            "(default: uniform).", rich_help_panel=_C, show_default=False),
        level_mode: str = typer.Option(
            "exact", "--level-mode", help="exact: output meets the level target (scarcest level sets the size); "
            "cap: no level keeps more than its share, thin levels keep all they have.", rich_help_panel=_C),
        level_names: str = typer.Option("low,mid,high", "--level-names", help="Level names, lowest first.",
                                        rich_help_panel=_C),
        level_edges: Optional[str] = typer.Option(
            None, "--level-edges", help="Complexity-score edges between levels (default: 4,7 on the 1-10 scale).",
            rich_help_panel=_C, show_default=False),
        depth_edges: Optional[str] = typer.Option(
            None, "--depth-edges", help="Evolution-round edges, used where no score exists (default: 1,2).",
            rich_help_panel=_C, show_default=False),
        topic_cap: Optional[int] = typer.Option(None, "--topic-cap", min=1, help="At most N records per topic.",
                                                rich_help_panel=_C, show_default=False),
        topic_cap_ratio: float = typer.Option(
            2.0, "--topic-cap-ratio", min=0.0, help="Without --topic-cap: cap = ratio x mean records per topic "
            "(0: no cap).", rich_help_panel=_C),
        size: Optional[int] = typer.Option(None, "--size", min=1, help="At most N records in the output.",
                                           rich_help_panel=_C, show_default=False),
        method: str = typer.Option("kmeans", "--method", help="Clustering: kmeans | hdbscan.", rich_help_panel=_C),
        k: Optional[int] = typer.Option(None, "--k", "--topics", min=1, help="Number of topics (kmeans)  "
                                        "(default: chosen by silhouette).", rich_help_panel=_C, show_default=False),
        k_min: int = typer.Option(2, "--k-min", min=2, help="Smallest k tried when choosing k.", rich_help_panel=_C),
        k_max: int = typer.Option(30, "--k-max", min=2, help="Largest k tried when choosing k.", rich_help_panel=_C),
        min_cluster_size: Optional[int] = typer.Option(None, "--min-cluster-size", min=2,
                                                       help="HDBSCAN minimum cluster size (default: n/100).",
                                                       rich_help_panel=_C, show_default=False),
        reuse_topics: bool = typer.Option(False, "--reuse-topics", help="Keep the records' existing topics.",
                                          rich_help_panel=_C),
        name_topics: bool = typer.Option(False, "--name-topics", help="Ask the model for a short name per topic.",
                                         rich_help_panel=_C),
        embedder: Optional[str] = typer.Option(None, "--embedder", help="Local sentence-transformers folder  "
                                               "(default: all-MiniLM-L6-v2).", rich_help_panel=_C, show_default=False),
        keep_dropped: bool = typer.Option(False, "--keep-dropped", help="Keep dropped records (status=rejected) "
                                          "in the output instead of <out>.rejected.jsonl.", rich_help_panel=_C),
        stats: Optional[str] = typer.Option(None, "--stats", help="Stats file (default: <out>.stats.json).",
                                            rich_help_panel=_C, show_default=False),
        upstream: Optional[list[str]] = typer.Option(
            None, "--upstream", help="More files whose records count in the stats only, e.g. evolve's "
            "eliminated records (repeatable).", rich_help_panel=_C, show_default=False),
        no_upstream: bool = typer.Option(False, "--no-upstream", help="Do not count <in>.rejected.jsonl and "
                                         "<in>.review.jsonl (what the gate set aside) in the stats.",
                                         rich_help_panel=_C),
        format: FormatOpt = "auto",
        to: ToOpt = "record",
        strict: StrictOpt = False,
        seed: SeedOpt = 0,
        backend: BackendOpt = None,
        base_url: BaseUrlOpt = None,
        model: ModelOpt = None,
        local_model: LocalModelOpt = None,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        profile: ProfileOpt = None,
        threads: ThreadsOpt = None,
    ) -> None:
        """Cluster topics, bin complexity levels, keep the best records per (topic, level) cell to meet the
        level target and the topic cap. Dropped records go to <out>.rejected.jsonl with reason
        balance:<topic>/<level>; acceptance rates per topic and level go to <out>.stats.json
        (feed it to `dataforge evolve --steer`)."""
        from ..curate.balance import BalanceConfig, run_balance

        cfg = BalanceConfig(
            levels_target=levels_target, level_mode=level_mode, level_names=level_names, level_edges=level_edges, depth_edges=depth_edges,
            topic_cap=topic_cap, topic_cap_ratio=topic_cap_ratio or None, size=size, method=method, k=k,
            k_min=k_min, k_max=k_max, min_cluster_size=min_cluster_size, reuse_topics=reuse_topics, name_topics=name_topics,
            embedder=embedder, keep_dropped=keep_dropped, stats_path=stats, upstream=upstream or [],
            auto_upstream=not no_upstream, in_format=format, out_format=to,
            strict=strict, seed=seed)
        llm = None
        if name_topics:
            from ..llm import make_llm

            llm = make_llm(backend_config_from_options(
                backend=backend, base_url=base_url, model=model, local_model=local_model, cache=cache,
                no_cache=no_cache, profile=profile, threads=threads))
        summary = run_balance(input, output, cfg, llm=llm)
        print_summary(summary, title="balance")
