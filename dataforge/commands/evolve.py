"""`dataforge evolve`: Evol-Instruct (in-depth + in-breadth evolution, elimination, answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (BackendOpt, BaseUrlOpt, CacheOpt, ConcurrencyOpt, FormatOpt, LocalModelOpt, MaxRetriesOpt,
                      KeepReasoningOpt, ModelOpt, NoCacheOpt, ProfileOpt, RpmOpt, SeedOpt, ShardOpt, StrictOpt, ThreadsOpt, TimeoutOpt,
                      ToOpt, TpmOpt, backend_config_from_options, config_error, emit_summary)

_E = "Evolution"


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def evolve(
    input_path: Annotated[Path, typer.Argument(help="Seed records (Self-Instruct seeds, Alpaca, chat or Record JSONL).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the evolved records.")],
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Evolution rounds.", rich_help_panel=_E)] = 4,
    ops: Annotated[Optional[str], typer.Option(
        "--ops", help="Comma-separated operations: add_constraints, deepen, concretize, increase_reasoning, "
        "complicate_input, breadth (default: all).", rich_help_panel=_E, show_default=False)] = None,
    weights: Annotated[Optional[str], typer.Option(
        "--weights", help="Comma-separated weights, one per --ops entry (default: uniform).", rich_help_panel=_E,
        show_default=False)] = None,
    topics: Annotated[Optional[str], typer.Option(
        "--topics", help="Comma-separated target topics for in-breadth evolution.", rich_help_panel=_E,
        show_default=False)] = None,
    steer: Annotated[Optional[Path], typer.Option(
        "--steer", help="stats.json from `dataforge balance`: aim at thin topics and complexity levels.",
        rich_help_panel=_E, show_default=False)] = None,
    verifiable_share: Annotated[float, typer.Option(
        "--verifiable-share", min=0, max=1, help="Share of add_constraints that attach a checkable constraint.",
        rich_help_panel=_E)] = 0.5,
    keep_failed: Annotated[bool, typer.Option(
        "--keep-failed", help="Also write failed evolutions (status rejected, with reasons).", rich_help_panel=_E)] = False,
    include_seeds: Annotated[bool, typer.Option(
        "--include-seeds", help="Also write the input records before the evolved ones.", rich_help_panel=_E)] = False,
    speculate: Annotated[bool, typer.Option(
        "--speculate/--no-speculate", help="Request a child's next-round rewrite while its answer is pending "
        "(same output, shorter wall time; off for a local model).", rich_help_panel=_E)] = True,
    judge: Annotated[str, typer.Option(
        "--judge", help="Information-gain judge: auto | model | embedding | off.", rich_help_panel=_E)] = "auto",
    temperature: Annotated[float, typer.Option("--temperature", min=0, rich_help_panel=_E)] = 0.7,
    evolve_max_tokens: Annotated[Optional[int], typer.Option(
        "--evolve-max-tokens", min=8, help="Max tokens per evolved instruction [default: 320 chat, 64 few-shot].",
        rich_help_panel=_E, show_default=False)] = None,
    answer_max_tokens: Annotated[Optional[int], typer.Option(
        "--answer-max-tokens", min=8, help="Max tokens per answer [default: 768 chat, 96 few-shot].",
        rich_help_panel=_E, show_default=False)] = None,
    json_summary: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    seed: SeedOpt = 0,
    shard: ShardOpt = None,
    format: FormatOpt = "auto",
    to: ToOpt = "record",
    strict: StrictOpt = False,
    backend: BackendOpt = None, base_url: BaseUrlOpt = None, model: ModelOpt = None, local_model: LocalModelOpt = None,
    concurrency: ConcurrencyOpt = None, timeout: TimeoutOpt = None, max_retries: MaxRetriesOpt = None,
    rpm: RpmOpt = None, tpm: TpmOpt = None, cache: CacheOpt = None, no_cache: NoCacheOpt = False,
    profile: ProfileOpt = None, threads: ThreadsOpt = None, keep_reasoning: KeepReasoningOpt = False,
) -> None:
    """Evolve seed instructions into harder and rarer ones (Evol-Instruct), answer them, and drop failed
    evolutions by the paper's four rules. Killed runs resume when re-run with the same command."""
    from pydantic import ValidationError

    from ..errors import DataforgeError
    from ..generate.elimination import EliminationConfig
    from ..generate.evolve import EvolveConfig, run_evolve

    backend_cfg = backend_config_from_options(**locals())
    try:
        w = [float(x) for x in _split(weights)] or None
    except ValueError:
        raise DataforgeError(f"--weights must be numbers separated by commas, got {weights!r}") from None
    try:
        cfg = EvolveConfig(
            rounds=rounds, ops=_split(ops) or None, weights=w, topics=_split(topics),
            steer=str(steer) if steer else None, verifiable_share=verifiable_share, keep_failed=keep_failed,
            include_seeds=include_seeds, speculate=speculate, seed=seed, temperature=temperature, evolve_max_tokens=evolve_max_tokens,
            answer_max_tokens=answer_max_tokens, shard=shard, format=format, out_format=to, strict=strict,
            elimination=EliminationConfig(judge=judge), backend=backend_cfg,
            **({"max_in_flight": concurrency} if concurrency else {}))
    except ValidationError as exc:
        raise config_error(exc) from None
    summary = run_evolve(input_path, output, cfg)
    emit_summary(summary, f"evolve → {output}", json_summary)


def register(app: typer.Typer) -> None:
    app.command("evolve")(evolve)
