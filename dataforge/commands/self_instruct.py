"""`dataforge self-instruct`: grow new tasks from seed tasks (Self-Instruct bootstrap, or the Alpaca variant)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (BackendOpt, BaseUrlOpt, CacheOpt, ConcurrencyOpt, FormatOpt, LocalModelOpt, MaxRetriesOpt,
                      ModelOpt, NoCacheOpt, ProfileOpt, RpmOpt, SeedOpt, StrictOpt, ThreadsOpt, TimeoutOpt, ToOpt,
                      TpmOpt, backend_config_from_options, config_error, emit_summary)

_G = "Generation"
_F = "Filters"


def self_instruct(
    input_path: Annotated[Path, typer.Argument(help="Seed tasks (Self-Instruct seed JSONL, Alpaca, chat or Record JSONL).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the new tasks (one record per instance).")],
    num_instructions: Annotated[int, typer.Option("-n", "--num-instructions", min=1,
                                                  help="New tasks to generate (seeds not counted).", rich_help_panel=_G)] = 100,
    variant: Annotated[str, typer.Option("--variant", help="self_instruct | alpaca (20 complete tasks per request).",
                                         rich_help_panel=_G)] = "self_instruct",
    requests_per_batch: Annotated[int, typer.Option("--batch", min=1, help="Requests per batch; the pool grows "
                                                    "between batches.", rich_help_panel=_G)] = 5,
    seed_examples: Annotated[int, typer.Option("--seed-examples", min=0, help="In-context seed instructions per request.",
                                               rich_help_panel=_G)] = 6,
    machine_examples: Annotated[int, typer.Option("--machine-examples", min=0,
                                                  help="In-context machine instructions per request.",
                                                  rich_help_panel=_G)] = 2,
    max_instances: Annotated[int, typer.Option("-k", "--instances", min=1, help="Instances per task at most.",
                                               rich_help_panel=_G)] = 3,
    temperature: Annotated[float, typer.Option("--temperature", min=0, rich_help_panel=_G)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.001, max=1, rich_help_panel=_G)] = 0.5,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", min=8, help="Max tokens per bootstrap request [default: 1024 chat / 192 few-shot; "
        "alpaca 3072 / 512].", rich_help_panel=_G, show_default=False)] = None,
    instance_max_tokens: Annotated[Optional[int], typer.Option(
        "--instance-max-tokens", min=8, help="Max tokens per instance request [default: 512 chat / 160 few-shot].",
        rich_help_panel=_G, show_default=False)] = None,
    max_requests: Annotated[Optional[int], typer.Option(
        "--max-requests", min=1, help="Stop after this many bootstrap requests [default: 20 + 2n].",
        rich_help_panel=_G, show_default=False)] = None,
    rouge_threshold: Annotated[float, typer.Option("--rouge-threshold", min=0, max=1,
                                                   help="Keep iff max ROUGE-L F vs. the pool is at most this.",
                                                   rich_help_panel=_F)] = 0.7,
    min_words: Annotated[int, typer.Option("--min-words", min=0, help="Instructions need more words than this.",
                                           rich_help_panel=_F)] = 3,
    max_words: Annotated[int, typer.Option("--max-words", min=1, help="...and at most this many.",
                                           rich_help_panel=_F)] = 150,
    blacklist: Annotated[Optional[str], typer.Option(
        "--blacklist", help="Comma-separated whole-word keywords that drop an instruction [default: image(s), "
        "graph(s), picture(s), file(s), map(s), draw, plot, go to, video, audio, music, flowchart, diagram].",
        rich_help_panel=_F, show_default=False)] = None,
    include_seeds: Annotated[bool, typer.Option("--include-seeds", help="Also write the seed records first.",
                                                rich_help_panel=_G)] = False,
    keep_rejected: Annotated[bool, typer.Option("--keep-rejected", help="Also write rejected candidates "
                                                "(status rejected, with the reason).", rich_help_panel=_G)] = False,
    json_summary: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    seed: SeedOpt = 0,
    format: FormatOpt = "auto",
    to: ToOpt = "record",
    strict: StrictOpt = False,
    backend: BackendOpt = None, base_url: BaseUrlOpt = None, model: ModelOpt = None, local_model: LocalModelOpt = None,
    concurrency: ConcurrencyOpt = None, timeout: TimeoutOpt = None, max_retries: MaxRetriesOpt = None,
    rpm: RpmOpt = None, tpm: TpmOpt = None, cache: CacheOpt = None, no_cache: NoCacheOpt = False,
    profile: ProfileOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Bootstrap new tasks from seed tasks as Self-Instruct does: sample 6 seed + 2 generated
    instructions per request, filter candidates (length, keywords, ROUGE-L novelty <= 0.7), identify
    classification tasks, generate instances. Killed runs resume when re-run with the same command."""
    from pydantic import ValidationError

    from ..generate.self_instruct import SelfInstructConfig, run_self_instruct

    backend_cfg = backend_config_from_options(**locals())
    extra = {}
    if blacklist is not None:
        extra["blacklist"] = [w.strip() for w in blacklist.split(",") if w.strip()]
    if concurrency:
        extra["max_in_flight"] = concurrency
    try:
        cfg = SelfInstructConfig(
            num_instructions=num_instructions, variant=variant, requests_per_batch=requests_per_batch,
            seed_examples=seed_examples, machine_examples=machine_examples, max_instances=max_instances,
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, instance_max_tokens=instance_max_tokens,
            max_requests=max_requests, rouge_threshold=rouge_threshold, min_words=min_words, max_words=max_words,
            include_seeds=include_seeds, keep_rejected=keep_rejected, seed=seed, format=format, out_format=to,
            strict=strict, backend=backend_cfg, **extra)
    except ValidationError as exc:
        raise config_error(exc) from None
    summary = run_self_instruct(input_path, output, cfg)
    emit_summary(summary, f"self-instruct → {output}", json_summary)


def register(app: typer.Typer) -> None:
    app.command("self-instruct")(self_instruct)
