"""The attention kernel behind `--attention-bias` on non-eager models (registered with transformers'
AttentionInterface under BIASED_ATTENTION). `InstructModel` points the model's config at it and marks each
attention module with (owner, layer, wrapped kernel name); eager models take a float-mask hook instead.
"""

from __future__ import annotations

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

BIASED_ATTENTION = "dataforge_instruction_bias"


def _biased_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention with a per-head bias on instruction keys, without materialising a (B,H,T,T) mask.

    One extra dimension does it: q' = [q, bias_h / scaling], k' = [k, is_instruction], v' = [v, 0], so
    scaling * q'.k' = scaling * q.k + bias_h * is_instruction; the wrapped kernel (sdpa) keeps its boolean
    mask and fast path. On GPU the extra width is padded to a multiple of 8; the extra outputs are cut.
    """
    owner_ref, layer, inner_name = module.__dict__["_dataforge_route"]
    owner = owner_ref()
    inner = ALL_ATTENTION_FUNCTIONS[inner_name]
    D = query.shape[-1]
    scaling = scaling if scaling is not None else D ** -0.5
    ctx = owner._ctx if owner is not None else {}
    ours = any(attention_mask is m for m in ctx.get("masks", {}).values())   # not a direct call of the base
    if "inst_key" not in ctx or not ours:
        return inner(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    B, H, T, _ = query.shape
    extra = (8 - D % 8 if D % 8 else 8) if query.is_cuda else 1     # GPU kernels want multiples of 8
    q_col = (owner.attn_bias.query_column(layer, ctx["query_cx"]).to(query.dtype) / scaling).expand(B, H, T, 1)
    inst_key = ctx["inst_key"][:, -key.shape[2]:]          # cached decoding: a sliding layer keeps its last keys
    k_col = inst_key.to(key.dtype)[:, None, :, None].expand(B, key.shape[1], key.shape[2], 1)
    query = torch.cat([query, q_col, query.new_zeros(B, H, T, extra - 1)], dim=-1)
    key = torch.cat([key, k_col, key.new_zeros(*key.shape[:3], extra - 1)], dim=-1)
    value = torch.cat([value, value.new_zeros(*value.shape[:3], extra)], dim=-1)
    out, weights = inner(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    return out[..., :D].contiguous(), weights


def register_biased_attention() -> None:
    from transformers import AttentionInterface

    if BIASED_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(BIASED_ATTENTION, _biased_attention)
