"""What an architecture's own `forward` does that dataforge must reproduce, or refuse.

dataforge runs the decoder stack (`base.base_model`) with its own 4-D block-diagonal masks (packing) and
applies the LM head itself (its modules sit in between), so whatever a model does around those is
reproduced here, or refused with a message naming the architecture:
- per-layer attention windows (`config.layer_types`, `config.sliding_window`): each layer gets the mask
  its config asks for (Gemma2/3 alternate sliding and full layers; Mistral/Phi3 slide everywhere);
- logits after the head: final soft-capping (Gemma2/3), scaling (Cohere `logit_scale`), division
  (Granite `logits_scaling`);
- the attention implementation must honour a 4-D mask: eager and sdpa do; flash-attention and other
  kernels that ignore it are refused (packed samples would attend to each other);
- at start-up `check_matches_base` compares the mods-off loss with the model's own loss on real samples
  and refuses to train on a mismatch: the net for anything else a model's forward does.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import DataforgeError

#: attention implementations that apply the 4-D mask dataforge builds
MASKED_ATTENTION = ("eager", "sdpa")
#: tolerance of the start-up check, relative to the loss (float32 weights, TF32 off during the check): the
#: two forwards run the same kernels on the same numbers, so they agree to ~1e-6; a sliding window applied
#: to the wrong layers moves a tiny random model's loss by ~1e-4
CHECK_TOLERANCE = 2e-5


def arch_name(config, model=None) -> str:
    """'Gemma2ForCausalLM (model_type 'gemma2')': the model class when known, else the config's."""
    names = getattr(config, "architectures", None) or []
    name = type(model).__name__ if model is not None else (names[0] if names else type(config).__name__)
    return f"{name} (model_type {getattr(config, 'model_type', '?')!r})"


def check_attention_implementation(config, impl: str) -> None:
    """Refuse kernels that ignore a 4-D mask: with them packed samples would see each other."""
    if impl not in MASKED_ATTENTION:
        raise DataforgeError(
            f"{arch_name(config)}: attention implementation {impl!r} is not supported. dataforge packs "
            f"several samples per row and keeps them apart with a 4-D block-diagonal mask, which {impl!r} "
            f"does not apply; load the model with attn_implementation='sdpa' (or 'eager')")


def attention_windows(config) -> list[int | None]:
    """Per decoder layer: None (full causal attention) or its sliding window W (a query sees itself and the
    W-1 tokens before it, as HF's `sliding_window_overlay`)."""
    n = config.num_hidden_layers
    if getattr(config, "use_bidirectional_attention", None):
        raise DataforgeError(f"{arch_name(config)}: bidirectional attention is not a causal LM; refusing to train")
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        return [int(window) if window else None] * n
    out: list[int | None] = []
    for i, kind in enumerate(types[:n]):
        if kind == "full_attention":
            out.append(None)
        elif kind == "sliding_attention" and window:
            out.append(int(window))
        else:
            raise DataforgeError(f"{arch_name(config)}: layer {i} has attention type {kind!r} "
                                 f"(sliding_window={window}), which dataforge does not reproduce; refusing to train")
    return out


def logit_transform(config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model's forward does to the LM head's output, as one function (None: nothing)."""
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    scale = getattr(config, "logit_scale", None)             # Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and scale != 1:
        steps.append(lambda x: x * scale)
    divide = getattr(config, "logits_scaling", None)         # Granite: logits / logits_scaling
    if isinstance(divide, (int, float)) and divide != 1:
        steps.append(lambda x: x / divide)
    cap = getattr(config, "final_logit_softcapping", None)    # Gemma2/3: cap * tanh(logits / cap)
    if cap:
        steps.append(lambda x: torch.tanh(x / cap) * cap)
    if not steps:
        return None

    def transform(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x
    return transform


@torch.no_grad()
def check_matches_base(base, examples, pad_id: int, device, max_samples: int = 8) -> dict[str, float]:
    """dataforge's mods-off forward and the model's own forward must give the same LM loss on real samples
    (unpacked, so the model's own masks apply). Returns both losses; raises DataforgeError on a mismatch."""
    from .data import collate
    from .losses import mean_token_ce
    from .model import InstructModel

    chosen = sorted(examples, key=len, reverse=True)[:max_samples]     # the longest: windows show there
    batch = {k: v.to(device) for k, v in collate([[e] for e in chosen], pad_id).items()}
    real = batch["sample_idx"] >= 0
    plain = InstructModel(base, {})
    was_training, tf32 = base.training, torch.backends.cuda.matmul.allow_tf32
    base.eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ours = float(mean_token_ce(plain(batch)["logits"], batch["lm_labels"]))
        theirs = float(base(input_ids=batch["input_ids"], attention_mask=real.long(), labels=batch["lm_labels"],
                            use_cache=False).loss)
    finally:
        base.train(was_training)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for hook in plain._hooks:            # the per-layer-mask hooks must not outlive the check on the base
            hook.remove()
    low_precision = next(base.parameters()).dtype != torch.float32
    tol = (2e-2 if low_precision else CHECK_TOLERANCE) * max(1.0, abs(theirs))
    if not abs(ours - theirs) <= tol:        # also refuses NaN
        raise DataforgeError(
            f"{arch_name(base.config, base)}: on the first batch dataforge's forward (modifications off) gives a loss "
            f"of {ours:.6f} but the model's own forward gives {theirs:.6f}. This architecture does something "
            "dataforge does not reproduce, so training would be silently wrong; refusing to train. Tested "
            "architectures: Llama, Qwen2, Mistral, Gemma, Gemma2, Gemma3, Phi3, GPT-2.")
    return {"dataforge_loss": round(ours, 6), "model_loss": round(theirs, 6), "samples": len(chosen),
            "tokens": int(real.sum())}
