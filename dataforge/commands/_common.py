"""Options every command shares, declared once so flags read the same everywhere.

    def evolve(..., base_url: BaseUrlOpt = None, model: ModelOpt = None, no_cache: NoCacheOpt = False, ...):
        cfg = backend_config_from_options(base_url=base_url, model=model, no_cache=no_cache, ...)

Backend options left unset (None) fall back to the environment, then to BackendConfig defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping, Optional

import typer

_B = "Backend"
_IO = "Input/output"

# -- backend ------------------------------------------------------------------------------------------
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", help="auto | openai | local | vllm (auto: openai when a base URL is set, else the embedded local model).",
    rich_help_panel=_B, show_default=False)]
BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1 [env: OPENAI_BASE_URL]; "
    "the key comes from OPENAI_API_KEY.", rich_help_panel=_B, show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Model name [env: DATAFORGE_MODEL]; default: the server's first model.", rich_help_panel=_B,
    show_default=False)]
LocalModelOpt = Annotated[Optional[str], typer.Option(
    "--local-model", help="GGUF file for the local backend (default: embedded SmolLM2-135M-Instruct).",
    rich_help_panel=_B, show_default=False)]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(
    "--concurrency", min=1, help="Requests in flight at once [default: 32].", rich_help_panel=_B, show_default=False)]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", min=0.001, help="Seconds per request attempt [default: 120].", rich_help_panel=_B, show_default=False)]
MaxRetriesOpt = Annotated[Optional[int], typer.Option(
    "--max-retries", min=0, help="Retries on 429/5xx/timeouts/connection errors [default: 6].", rich_help_panel=_B,
    show_default=False)]
RpmOpt = Annotated[Optional[float], typer.Option(
    "--rpm", min=0.001, help="Requests-per-minute limit.", rich_help_panel=_B, show_default=False)]
TpmOpt = Annotated[Optional[float], typer.Option(
    "--tpm", min=1, help="Tokens-per-minute limit.", rich_help_panel=_B, show_default=False)]
CacheOpt = Annotated[Optional[str], typer.Option(
    "--cache", help="Request cache file (SQLite) [default: ~/.cache/dataforge/requests.sqlite].", rich_help_panel=_B,
    show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Send every request; read and write no request cache.", rich_help_panel=_B)]
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--profile", help="Prompt profile: chat | fewshot [default: by model; small models get fewshot].",
    rich_help_panel=_B, show_default=False)]
KeepReasoningOpt = Annotated[bool, typer.Option(
    "--keep-reasoning", help="Keep a reasoning model's thinking in lineage.history (it never enters the data).",
    rich_help_panel=_B)]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads for the local backend [default: CPUs - 1].", rich_help_panel=_B, show_default=False)]

# -- input/output ---------------------------------------------------------------------------------------
FormatOpt = Annotated[str, typer.Option(
    "--format", help="Input format: auto | record | selfinstruct | alpaca | chat | parquet | hf.", rich_help_panel=_IO)]
ToOpt = Annotated[str, typer.Option(
    "--to", "--out-format", help="Output format: record | alpaca | chat | parquet.", rich_help_panel=_IO)]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Stop at the first bad input line instead of writing it to the rejects file.", rich_help_panel=_IO)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice (derived per item).", rich_help_panel=_IO)]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="Process only shard i of n (\"i/n\", by record id), for parallel workers.", rich_help_panel=_IO,
    show_default=False)]

_RENAMES = {"cache": "cache_path", "threads": "n_threads", "n_threads": "n_threads", "cache_path": "cache_path"}
_BACKEND_KEYS = {"backend", "base_url", "model", "local_model", "concurrency", "timeout", "max_retries", "rpm", "tpm",
                 "cache", "cache_path", "no_cache", "profile", "threads", "n_threads", "n_ctx", "api_key_env",
                 "keep_reasoning"}


def backend_config_from_options(**options: Any):
    """A `BackendConfig` from CLI option values (unknown keys are ignored so commands can pass
    `**locals()`); unset options fall back to the environment."""
    from ..errors import DataforgeError
    from ..llm import BackendConfig

    values = {_RENAMES.get(k, k): v for k, v in options.items() if k in _BACKEND_KEYS and v is not None}
    for flag in ("no_cache", "keep_reasoning"):
        if values.get(flag) is False:
            values.pop(flag)
    if values.get("profile") not in (None, "chat", "fewshot"):
        raise DataforgeError(f"--profile must be chat or fewshot (got {values['profile']!r})")
    if values.get("backend") not in (None, "auto", "openai", "local", "vllm"):
        raise DataforgeError(f"--backend must be auto, openai, local or vllm (got {values['backend']!r})")
    return BackendConfig.from_env(**values)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def print_summary(summary: Mapping[str, Any], title: str = "summary") -> None:
    """The closing summary of a command as a two-column rich table on stdout (nested dicts dotted)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in _flatten(summary):
        table.add_row(key, _fmt(value))
    Console().print(table)


def emit_summary(summary: Mapping[str, Any], title: str, as_json: bool = False) -> None:
    """A command's closing summary: the table above, or one JSON object on stdout with ``--json``."""
    if as_json:
        import json

        import typer

        typer.echo(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
        return
    print_summary({k: ("none" if v is None or v == {} else v) for k, v in summary.items()}, title=title)


def config_error(exc: Exception):
    """A pydantic ValidationError from building a stage config, as one clear user-facing error."""
    from ..errors import DataforgeError

    errors = getattr(exc, "errors", lambda: [])()
    parts = [f"{'.'.join(map(str, e['loc'])) + ': ' if e.get('loc') else ''}{e['msg'].removeprefix('Value error, ')}"
             for e in errors]
    return DataforgeError("; ".join(parts) or str(exc))
