"""LoRA and QLoRA adapters through `peft`.

peft injects its LoRA layers into the Hugging Face model in place, so `InstructModel` wraps the same model
object it always does and every dataforge modification keeps working (and training) next to the adapter;
peft freezes the base. New [INST]/[/INST] rows of a resized embedding train through peft's
`trainable_token_indices` (only those rows). The run's `model/` is a peft adapter directory
(`PeftModel.from_pretrained(base, dir)` loads it; the modules sit next to it in
`dataforge_mods.safetensors`); `--merge` also writes `merged/`, the adapter folded into the base.
Checkpoints hold the trainable tensors only: the frozen base is the model the run starts from.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import DataforgeError

ADAPTER_CONFIG = "adapter_config.json"


def check_qlora() -> None:
    """QLoRA runs on bitsandbytes' CUDA kernels: refuse clearly anywhere else."""
    if not torch.cuda.is_available():
        raise DataforgeError("--qlora needs a CUDA GPU: the 4-bit NF4 base weights run on bitsandbytes' CUDA "
                             "kernels. On this machine use --lora (same adapters on a frozen float base).")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise DataforgeError("--qlora needs bitsandbytes: pip install 'dataforge[qlora]'") from exc


def load_qlora_base(cfg, device: torch.device):
    """(model, tokenizer) with the base linear layers in 4-bit NF4 (double quantised, bf16 compute)."""
    check_qlora()
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from .model import quiet_hf

    path, tmp = Path(cfg.model), None
    if cfg.model == "smollm2":                 # bitsandbytes quantises on load: give it a float HF directory
        from .smollm2 import load_smollm2

        model, tok = load_smollm2()
        tmp = tempfile.TemporaryDirectory(prefix="dataforge-qlora-")
        path = Path(tmp.name)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        del model
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    with quiet_hf():
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": device})
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer or path)
    if tmp is not None:
        tmp.cleanup()
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.grad_checkpointing)
    return model, tok


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def apply_lora(model: torch.nn.Module, cfg, new_token_ids: list[int] | None = None):
    """Inject LoRA layers into `model` (in place); returns the PeftModel that owns the adapter."""
    from peft import LoraConfig, get_peft_model

    targets: Any = "all-linear" if cfg.lora_targets == ["all-linear"] else list(cfg.lora_targets)
    extra: dict[str, Any] = {}
    if new_token_ids:
        extra["trainable_token_indices"] = {_module_name(model, model.get_input_embeddings()): list(new_token_ids)}
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM", **extra)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise DataforgeError(f"--lora-targets {','.join(cfg.lora_targets)}: {exc}") from exc


def adapted_modules(peft_model) -> list[str]:
    """Short names of the adapted layers (q_proj, v_proj, ...), sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name in peft_model.peft_config["default"].target_modules})


def param_counts(module: torch.nn.Module) -> dict[str, Any]:
    """Trainable and total parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)    # 4-bit: two values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_share": round(trainable / max(1, total), 6)}


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter run changes (its checkpoints hold only these)."""
    return {n: p.detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(names - state.keys()), sorted(state.keys() - names)
    if missing or unexpected:
        raise DataforgeError(f"{where}: checkpoint does not match this run's trainable parameters "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    module.load_state_dict(state, strict=False)


def save_adapter(out: Path, imodel, peft_model, tokenizer, meta: dict[str, Any]) -> None:
    """The peft adapter directory (+ modules, tokenizer, dataforge.json)."""
    # resized vocabulary ([INST]/[/INST]): keep the embedding matrices with the adapter (peft cannot tell for a
    # base it has no config file for, e.g. the GGUF-derived SmolLM2)
    peft_model.save_pretrained(out, save_embedding_layers=True if imodel.prompt_only_ids else "auto")
    imodel.save_mods(out)
    tokenizer.save_pretrained(out)
    imodel.write_meta(out, meta | {"plain_hf": False})


def adapter_meta(cfg, peft_model) -> dict[str, Any]:
    base = cfg.model if cfg.model == "smollm2" else str(Path(cfg.model).resolve())
    return {"base_model": base, "r": cfg.lora_r, "alpha": cfg.lora_alpha, "targets": adapted_modules(peft_model),
            "qlora": cfg.qlora}


def load_adapter_model(d: Path, meta: dict[str, Any], tokenizer):
    """InstructModel = the adapter's base (from `meta['adapter']['base_model']`) + the peft adapter + modules."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .model import InstructModel, quiet_hf

    info = meta["adapter"]
    with quiet_hf():
        if info["base_model"] == "smollm2":
            from .smollm2 import load_smollm2

            base, _ = load_smollm2()
        else:
            if not Path(info["base_model"]).is_dir():
                raise DataforgeError(f"{d}: the adapter's base model {info['base_model']} is not a directory here")
            base = AutoModelForCausalLM.from_pretrained(info["base_model"], dtype=torch.float32)
    if info.get("qlora"):
        print(f"note: {d} was trained on a 4-bit base; it is loaded onto the float base (as merging does), so "
              "outputs differ slightly from the 4-bit training-time model", file=sys.stderr)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    peft_model = PeftModel.from_pretrained(base, d)
    imodel = InstructModel(peft_model.get_base_model(), meta["mods"], meta.get("n_tasks", 0),
                           meta.get("prompt_only_ids"))
    imodel.load_mods(d)
    attach(imodel, peft_model)
    return imodel


def attach(imodel, peft_model) -> None:
    """Keep the PeftModel next to the InstructModel (not as a submodule: its weights are already there)."""
    imodel.__dict__["peft_model"] = peft_model


def merge_into_base(imodel) -> None:
    """Fold the adapter into the base weights, in place: `imodel` becomes a model without peft layers."""
    peft_model = imodel.__dict__.pop("peft_model")
    merged = peft_model.merge_and_unload()
    if merged is not imodel.base:
        raise DataforgeError("peft returned a different model object when merging")
