"""`DataforgeConfig`: the `config.json` of a checkpoint with dataforge modifications.

It names its own architecture (`model_type: "dataforge"`), so a tool that does not know dataforge refuses
the checkpoint instead of loading the base weights and silently dropping the modules. The base model's
config is kept whole inside it (`base_config`), the modifications next to it. Light on purpose (no torch
import): it is registered with `AutoConfig` whenever transformers' auto-config module loads.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

MODEL_TYPE = "dataforge"
ARCHITECTURE = "DataforgeForCausalLM"


class DataforgeConfig(PretrainedConfig):
    """Base config (a dict with its own `model_type`) + the dataforge modification settings."""

    model_type = MODEL_TYPE

    def __init__(self, base_config: dict[str, Any] | None = None, mods: dict[str, Any] | None = None,
                 n_tasks: int = 0, prompt_only_ids: list[int] | None = None, **kwargs):
        self.base_config = dict(base_config or {})
        self.mods = dict(mods or {})
        self.n_tasks = int(n_tasks)
        self.prompt_only_ids = list(prompt_only_ids or [])
        kwargs.setdefault("architectures", [ARCHITECTURE])
        kwargs["tie_word_embeddings"] = False          # the base model ties its own weights, if it does
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        """The decoder's config is the base model's (generation sizes its KV cache from it)."""
        return self.base()

    def base(self) -> PretrainedConfig:
        """The wrapped model's own config object (LlamaConfig, GPT2Config, ...)."""
        from transformers import AutoConfig

        cfg = dict(self.base_config)
        model_type = cfg.pop("model_type", None)
        if not model_type:
            from ..errors import DataforgeError

            raise DataforgeError("dataforge config.json: base_config has no model_type")
        return AutoConfig.for_model(model_type, **cfg)


def register_config() -> None:
    """Register `DataforgeConfig` with `AutoConfig` (idempotent)."""
    from transformers import AutoConfig

    AutoConfig.register(MODEL_TYPE, DataforgeConfig, exist_ok=True)
