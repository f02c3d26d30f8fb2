"""Cached decoding for modified models: the prompt-only work is done once per prompt.

What the modifications add depends on the prompt alone: the instruction encoder's vector (fused into every
token after the instruction and re-injected after every layer), the segment of a generated token (always
"response"), and which keys are instruction tokens (the attention bias). So the prompt runs once through
the ordinary forward, filling the base model's KV cache and leaving those per-prompt tensors; each new token
then runs alone: its embedding plus the response segment vector plus the fused vector, attending to the
cached keys with the instruction-key bias extended by one non-instruction key, each layer over the keys its
attention window allows (sliding-window layers of Gemma2/3, Mistral, Qwen2, Phi3). Greedy decoding gives
the tokens of the uncached path (tested for every modification, on sdpa and eager models, and on models
whose windows are shorter than the text).
"""

from __future__ import annotations

from typing import Any

import torch

from .data import SEG_INSTRUCTION, SEG_RESPONSE


def cache_argument(base_model) -> str:
    """The name the model's forward takes its KV cache by (`cache` in transformers >= 5.2x, before that
    `past_key_values`)."""
    import inspect

    return "cache" if "cache" in inspect.signature(base_model.forward).parameters else "past_key_values"


class CachedDecoder:
    """One prompt (a single-sample batch as `model._single` makes it) -> `out` (the prompt pass's outputs),
    then `step(token)` -> outputs for that next token ({'logits': (1, 1, V)})."""

    def __init__(self, model, batch: dict[str, torch.Tensor], cache=None):
        from transformers import DynamicCache

        if batch["input_ids"].shape[0] != 1:
            from ..errors import DataforgeError

            raise DataforgeError("cached generation of a modified model takes one prompt at a time")
        self.model = model
        self.cache = cache if cache is not None else DynamicCache(config=model.base.config)
        self.out = model(batch, cache=self.cache)
        ctx = model._ctx
        self.dtype = self.out["logits"].dtype
        self.device = batch["input_ids"].device
        self.fuse = ctx["fuse"][:1] if "fuse" in ctx else None                  # (1, D)
        self.inject = ctx.get("inject")                                          # (1, layers, D)
        self.inst_key = (batch["segment_ids"] == SEG_INSTRUCTION).float()        # (1, T), one column per key
        self.complexity = float(batch["complexity"][0])

    def step(self, token: int) -> dict[str, Any]:
        m, dev = self.model, self.device
        x = m.base.get_input_embeddings()(torch.tensor([[token]], device=dev))
        if m.segment_emb is not None:
            x = x + m.segment_emb(torch.tensor([[SEG_RESPONSE]], device=dev)).to(x.dtype)
        ctx: dict[str, Any] = {}
        if self.fuse is not None:                     # every generated token comes after the instruction
            x = x + self.fuse.to(x.dtype)[:, None]
            ctx.update(inject=self.inject, gather=torch.zeros((1, 1), dtype=torch.long, device=dev),
                       after=torch.ones((1, 1, 1), dtype=x.dtype, device=dev))
        self.inst_key = torch.cat([self.inst_key, self.inst_key.new_zeros(1, 1)], dim=1)
        T = self.inst_key.shape[1]
        as_float = m._orig_attn == "eager" or (m.attn_bias is not None and not m._bias_route)
        masks = {w: _step_mask(self._keys_seen(w, T), w, x.dtype, dev, as_float) for w in set(m.windows)}
        mask = masks[m.windows[0]]                  # the other layers' masks come from the attention hook
        ctx.update(masks=masks, passed=mask)
        if m.attn_bias is not None:
            ctx.update(inst_key=self.inst_key.to(x.dtype), query_cx=torch.full((1, 1), self.complexity, dtype=x.dtype,
                                                                                device=dev),
                       key_cx=torch.full((1, T), self.complexity, dtype=x.dtype, device=dev))
        m._ctx = ctx
        hidden = m.base.base_model(inputs_embeds=x, attention_mask=mask, position_ids=torch.tensor([[T - 1]], device=dev),
                                   use_cache=True, **{cache_argument(m.base.base_model): self.cache}).last_hidden_state
        if m.reasoning is not None:
            hidden = m.reasoning(hidden)
        return {"logits": m._logits(hidden)}


    def _keys_seen(self, window: int | None, total: int) -> int:
        """How many keys the layers with this window attend over for the next token: a full cache layer returns
        every earlier key plus the new one; a sliding one (transformers builds them from `layer_types`) keeps
        only its window's last keys."""
        layer = self.model.windows.index(window)
        cached = self.cache.layers[layer] if layer < len(self.cache.layers) else None
        if cached is None or getattr(cached, "keys", None) is None:
            return total
        return int(cached.keys.shape[-2]) + 1


def _step_mask(keys: int, window: int | None, dtype: torch.dtype, device, as_float: bool) -> torch.Tensor:
    """(1, 1, 1, keys) mask of the newest token over the last `keys` keys: with a window W it sees itself and
    the W-1 keys before it (as in training's `InstructModel._mask`), else all of them."""
    allowed = torch.ones(keys, dtype=torch.bool, device=device)
    if window is not None and window < keys:
        allowed[: keys - window] = False
    allowed = allowed.view(1, 1, 1, keys)
    if not as_float:
        return allowed
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=device), torch.finfo(dtype).min)


def cached_forward(imodel, input_ids: torch.Tensor, segment_ids: torch.Tensor | None, complexity, cache,
                   attention_mask: torch.Tensor | None = None):
    """`DataforgeForCausalLM.forward` with a cache, as transformers' `generate` calls it: the first call (an
    empty cache) is the prompt pass and leaves a CachedDecoder on the cache object; each later call feeds
    the new token(s). One prompt at a time, without padding."""
    from transformers import DynamicCache
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from ..errors import DataforgeError
    from .hf_auto import single_sample_batch

    if input_ids.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
        raise DataforgeError("cached generation of a modified model takes one unpadded prompt at a time")
    if cache is None:
        cache = DynamicCache(config=imodel.base.config)
    decoder = getattr(cache, "_dataforge_decoder", None)
    if decoder is None or cache.get_seq_length() == 0:
        decoder = CachedDecoder(imodel, single_sample_batch(input_ids, None, segment_ids, complexity), cache)
        cache._dataforge_decoder = decoder
        logits = decoder.out["logits"]
    else:
        for token in input_ids[0].tolist():
            logits = decoder.step(token)["logits"]
    field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    return CausalLMOutputWithPast(logits=logits, **{field: cache})
