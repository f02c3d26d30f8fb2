"""Checkpoints with modifications that load anywhere transformers does: `DataforgeForCausalLM`.

A model directory with dataforge modifications holds a `config.json` of type `dataforge` (the base config
inside it) and one `model.safetensors` with the base weights (`base.*`) and the modules. After
`import dataforge`, `AutoModelForCausalLM.from_pretrained(dir)` returns a `DataforgeForCausalLM` (no
remote code): a `PreTrainedModel` around the same `InstructModel` that `load_instruct` returns, so the
logits are the same. A tool that does not import dataforge refuses the unknown model type instead of
loading the base and silently dropping the modules.

The modules need to know which tokens are instruction, input or response (`segment_ids`, built by
`PromptFormatter.encode_prompt`); a call without them is refused when a module reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..errors import DataforgeError
from .data import SEG_INSTRUCTION
from .hf_config import DataforgeConfig
from .model import InstructModel, quiet_hf

WEIGHTS_FILE = "model.safetensors"
#: keyword arguments of `from_pretrained` that only concern where files come from (no effect on a local dir)
_HUB_KWARGS = {"cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies",
               "trust_remote_code", "code_revision", "_from_auto", "_commit_hash", "adapter_kwargs",
               "use_safetensors", "low_cpu_mem_usage", "key_mapping"}


def config_for(imodel: InstructModel) -> DataforgeConfig:
    """The dataforge config.json of an InstructModel (its base config as the base was built)."""
    base_cfg = imodel.base.config
    routed = base_cfg._attn_implementation
    base_cfg._attn_implementation = imodel._orig_attn
    try:
        base_dict = base_cfg.to_dict()
    finally:
        base_cfg._attn_implementation = routed
    return DataforgeConfig(base_config=base_dict, mods=imodel.mods, n_tasks=imodel.n_tasks,
                           prompt_only_ids=imodel.prompt_only_ids)


def _without_tied_copies(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Drop all but the first name of each group of parameters the model ties (safetensors stores each once;
    `safetensors.torch.load_model` restores the ties)."""
    by_ptr: dict[tuple, list[str]] = {}
    for name, t in model.state_dict().items():
        local = t.to_local() if hasattr(t, "to_local") else t
        by_ptr.setdefault((local.device.type, local.untyped_storage().data_ptr()), []).append(name)
    drop = {n for names in by_ptr.values() if len(names) > 1 for n in sorted(names)[1:]}
    return {k: v for k, v in state.items() if k not in drop}


def save_modified(imodel: InstructModel, out: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """config.json (type dataforge) + model.safetensors (base and modules). `state`: a full state dict of
    `imodel` gathered elsewhere (FSDP), else the model's own tensors."""
    from safetensors.torch import save_file, save_model

    config_for(imodel).save_pretrained(out)
    if state is None:
        save_model(imodel, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    else:
        kept = {k: v.detach().contiguous().cpu() for k, v in _without_tied_copies(state, imodel).items()}
        save_file(kept, str(out / WEIGHTS_FILE), metadata={"format": "pt"})


def load_modified(d: Path, dtype: torch.dtype = torch.float32) -> InstructModel:
    """An InstructModel from a dataforge-type directory (config.json + model.safetensors)."""
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM

    config = DataforgeConfig.from_pretrained(d)
    with quiet_hf():
        base = AutoModelForCausalLM.from_config(config.base(), dtype=dtype)
    imodel = InstructModel(base, config.mods, config.n_tasks, config.prompt_only_ids)
    missing, unexpected = load_model(imodel, str(d / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise DataforgeError(f"{d / WEIGHTS_FILE}: weights do not match config.json (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
    return imodel.to(dtype)


def needs_segments(imodel: InstructModel) -> bool:
    """True when the logits depend on which tokens are instruction / input / response."""
    return any(m is not None for m in (imodel.segment_emb, imodel.attn_bias, imodel.encoder))


def single_sample_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        segment_ids: torch.Tensor | None, complexity: torch.Tensor | float | None
                        ) -> dict[str, torch.Tensor]:
    """The trainer's batch tensors for rows holding one sample each (left or right padding allowed)."""
    B, T = input_ids.shape
    dev = input_ids.device
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    rows = torch.arange(B, device=dev)[:, None].expand(B, T)
    sidx = torch.where(real, rows, -1)
    pos = (real.long().cumsum(1) - 1).clamp(min=0)
    seg = segment_ids if segment_ids is not None else torch.zeros_like(input_ids)
    inst = (seg == SEG_INSTRUCTION) & real
    idx = torch.arange(T, device=dev)[None].expand(B, T)
    last = torch.where(inst, idx, -1).max(dim=1).values
    after = (idx > last[:, None]) & real
    cx = torch.zeros(B, device=dev) if complexity is None else \
        torch.as_tensor(complexity, dtype=torch.float32, device=dev).reshape(-1).expand(B) / 10.0
    return {"input_ids": input_ids, "position_ids": pos, "segment_ids": seg, "sample_idx": sidx,
            "after_inst": after, "task_ids": torch.full((B,), -100, device=dev), "complexity": cx,
            "temp_target": torch.full((B,), float("nan"), device=dev)}


class DataforgeForCausalLM(PreTrainedModel, GenerationMixin):
    """transformers-facing wrapper of an `InstructModel` (see the module docstring)."""

    config_class = DataforgeConfig
    base_model_prefix = "inner"
    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config: DataforgeConfig, inner: InstructModel | None = None):
        super().__init__(config)
        if inner is None:
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_config(config.base())
            inner = InstructModel(base, config.mods, config.n_tasks, config.prompt_only_ids)
        self.inner = inner
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, dtype=None, torch_dtype=None,
                        device_map=None, **kwargs):
        """Load a dataforge model directory. Honours `dtype` and a single-device `device_map`; options that
        would change the weights (quantization, multi-device maps) are refused rather than ignored."""
        d = Path(pretrained_model_name_or_path)
        unknown = sorted(k for k in kwargs if k not in _HUB_KWARGS and k != "attn_implementation")
        if args or unknown:
            raise DataforgeError(f"DataforgeForCausalLM.from_pretrained does not support {unknown or args}")
        if not (d / WEIGHTS_FILE).exists():
            raise DataforgeError(f"{d}: no {WEIGHTS_FILE} (only local dataforge model directories load)")
        dtype = dtype or torch_dtype or torch.float32
        if isinstance(dtype, str):
            dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
        if device_map is not None and not isinstance(device_map, (str, torch.device)):
            raise DataforgeError("DataforgeForCausalLM: device_map must be one device ('cpu', 'cuda:0', ...)")
        inner = load_modified(d, dtype)
        model = cls(DataforgeConfig.from_pretrained(d), inner=inner)
        if device_map not in (None, "auto"):
            model.to(device_map)
        elif device_map == "auto" and torch.cuda.is_available():
            model.to("cuda")
        return model.eval()

    def init_weights(self) -> None:
        """No-op: the base was initialised (or loaded) by its own class, and every dataforge module starts
        from its own no-op init; transformers' generic init would overwrite both."""

    def save_pretrained(self, save_directory, **kwargs) -> None:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        save_modified(self.inner, out)

    def get_input_embeddings(self):
        return self.inner.base.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.base.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, complexity: Any = None, labels: torch.Tensor | None = None,
                cache=None, past_key_values=None, use_cache: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits of rows that each hold one prompt (+ response). `segment_ids`: per token, from
        `PromptFormatter.encode_prompt`/`encode`; `complexity`: 1-10 per row (0 when unknown)."""
        if segment_ids is None and needs_segments(self.inner):
            raise DataforgeError("this dataforge model reads which tokens are the instruction: pass segment_ids "
                                 "(PromptFormatter.encode_prompt gives them), or use `dataforge generate`")
        cache = cache if cache is not None else past_key_values
        if cache is not None or use_cache:
            from .kv_cache import cached_forward

            return cached_forward(self.inner, input_ids, segment_ids, complexity, cache, attention_mask)
        batch = single_sample_batch(input_ids, attention_mask, segment_ids, complexity)
        out = self.inner(batch)
        loss = None
        if labels is not None:
            from .losses import mean_token_ce

            loss = mean_token_ce(out["logits"], self.inner.lm_labels(labels))
        return CausalLMOutputWithPast(loss=loss, logits=out["logits"])


def register_model() -> None:
    """Register `DataforgeForCausalLM` with `AutoModelForCausalLM` (and its config with `AutoConfig`)."""
    from transformers import AutoModelForCausalLM

    from .hf_config import register_config

    register_config()
    AutoModelForCausalLM.register(DataforgeConfig, DataforgeForCausalLM, exist_ok=True)
