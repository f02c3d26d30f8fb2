"""`InstructModel`: a Hugging Face causal LM plus the optional instruction-aware modules; save and load.

The base model stays an ordinary HF model (its config and weights are never patched), so a run without
modifications saves a checkpoint that `AutoModelForCausalLM.from_pretrained` (or vLLM) loads as is. The
modules reach inside it in two architecture-neutral ways:
- a forward pre-hook on each layer's attention module swaps in that layer's own 4-D mask (its sliding
  window, see `arch.py`) with, on the float-mask route, its per-head bias added (HF passes a ready 4-D mask
  straight through to the attention function, eager or sdpa);
- a forward hook on each decoder layer adds the gated instruction re-injection to its output.
Both read the per-batch tensors that `forward` leaves in `self._ctx` (kept after the call, because gradient
checkpointing re-runs the layers during backward). What a model's own forward does after the layers
(soft-capping, logit scaling) is reproduced by `arch.logit_transform`.
"""

from __future__ import annotations

import json
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataforgeError
from .arch import attention_windows, check_attention_implementation, logit_transform
from .attention import BIASED_ATTENTION, register_biased_attention
from .data import IGNORE, INST_CLOSE, INST_OPEN, MASK_TOKEN, SEG_INSTRUCTION, SEG_RESPONSE, PromptFormatter
from .modules import (InstructionAttentionBias, InstructionEncoder, ReasoningHead, SegmentEmbedding,
                      TemperatureHead, TwoStreamFusion, sample_mean)
from .neftune import add_neftune_noise

META_FILE = "dataforge.json"
MODS_FILE = "dataforge_mods.safetensors"
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")


@contextmanager
def quiet_hf():
    """Silence transformers' per-file tqdm bars (loading/writing weights): dataforge shows its own progress."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def decoder_layers(base: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks (`model.layers` for Llama, `transformer.h` for GPT-2, ...)."""
    n = base.config.num_hidden_layers
    for module in base.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise DataforgeError(f"cannot find the {n} decoder layers of {type(base).__name__}")


def attention_module(layer: nn.Module) -> nn.Module:
    for name in _ATTN_NAMES:
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    for child in layer.children():
        if "Attention" in type(child).__name__:
            return child
    raise DataforgeError(f"cannot find the attention module of {type(layer).__name__}")


def add_prompt_only_tokens(tokenizer, tokens: list[str]) -> list[int]:
    """Add tokens as special (never split) tokens, no-op if present; return their ids. The caller resizes
    the embeddings and lists the ids as prompt-only (read, never predicted)."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(tokens)


def add_inst_tokens(tokenizer) -> list[int]:
    """Add [INST]/[/INST] as special tokens; return their ids."""
    return add_prompt_only_tokens(tokenizer, [INST_OPEN, INST_CLOSE])


def add_mask_token(tokenizer) -> int:
    """Add instruction masking's dedicated mask token; return its id."""
    return add_prompt_only_tokens(tokenizer, [MASK_TOKEN])[0]


class InstructModel(nn.Module):
    """Base causal LM + instruction modules. `forward(batch)` takes the tensors made by `data.collate`."""

    def __init__(self, base: nn.Module, mods: dict[str, Any], n_tasks: int = 0,
                 prompt_only_ids: list[int] | None = None):
        super().__init__()
        self.base = base
        self.mods = dict(mods)
        self.n_tasks = n_tasks
        self.prompt_only_ids = list(prompt_only_ids or [])
        cfg = base.config
        d, n_layers, n_heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
        m = self.mods
        self.segment_emb = SegmentEmbedding(d) if m.get("segment_embedding") else None
        self.attn_bias = (InstructionAttentionBias(n_layers, n_heads, bool(m.get("attention_bias_complexity")))
                          if m.get("attention_bias") else None)
        self.encoder = self.fusion = self.repr_proj = None
        if m.get("fusion"):
            self.encoder = InstructionEncoder(d, m["fusion_dim"], m["fusion_layers"], m["fusion_heads"])
            self.fusion = TwoStreamFusion(m["fusion_dim"], d, n_layers)
            self.repr_proj = nn.Linear(m["fusion_dim"], d)
        self.temp_head = TemperatureHead(d) if m.get("temperature_head") else None
        self.task_head = nn.Linear(d, n_tasks) if (m.get("task_head") and n_tasks > 0) else None
        self.reasoning = ReasoningHead(d, m["reasoning_paths"]) if m.get("reasoning_head") else None
        self.neftune_alpha = 0.0          # set by the trainer; noise only while training (see neftune.py)
        self._ctx: dict[str, Any] = {}
        self._hooks = []
        layers = decoder_layers(base)
        impl = getattr(cfg, "_attn_implementation", None) or "eager"
        if impl == BIASED_ATTENTION:     # its attention kernel would read the other wrapper's batch state
            raise DataforgeError("this base model is already wrapped by an InstructModel with an attention bias")
        check_attention_implementation(cfg, impl)
        self._orig_attn = impl
        self.windows = attention_windows(cfg)
        self._post_head = logit_transform(cfg)
        # fast path: route the sdpa kernel through _biased_attention; eager models get a float-mask hook
        # (attention soft-capping, Gemma2, is eager-only: there the bias lands after the cap, like a mask)
        self._bias_route = self.attn_bias is not None and impl != "eager"
        if self._bias_route:
            register_biased_attention()
            cfg._attn_implementation = BIASED_ATTENTION
        per_layer_masks = len(set(self.windows)) > 1
        for i, layer in enumerate(layers):
            if self._bias_route:
                object.__setattr__(attention_module(layer), "_dataforge_route", (weakref.ref(self), i, impl))
            if per_layer_masks or (self.attn_bias is not None and not self._bias_route):
                self._hooks.append(attention_module(layer).register_forward_pre_hook(
                    self._attention_hook(i), with_kwargs=True))
            if self.fusion is not None:
                self._hooks.append(layer.register_forward_hook(self._inject_hook(i), with_kwargs=True))

    # ------------------------------------------------------------------ hooks
    def _attention_hook(self, layer: int):
        """This layer's mask (its window), plus its per-head instruction bias on the float-mask route."""
        window = self.windows[layer]

        def hook(module, args, kwargs):
            ctx = self._ctx
            if not _called_by_us(ctx, args, kwargs):
                return None
            mask = ctx["masks"][window]
            if "inst_key" in ctx and not self._bias_route:
                keys = mask.shape[-1]          # cached decoding: a sliding layer attends over its last keys only
                bias = self.attn_bias.layer_bias(layer, ctx["inst_key"][:, -keys:], ctx["key_cx"][:, -keys:])
                mask = mask + bias.to(mask.dtype)
            kwargs["attention_mask"] = mask
            return args, kwargs
        return hook

    def _inject_hook(self, layer: int):
        def hook(module, args, kwargs, output):
            ctx = self._ctx
            if "inject" not in ctx or not _called_by_us(ctx, args, kwargs):
                return None
            add = ctx["inject"][:, layer][ctx["gather"]] * ctx["after"]
            if isinstance(output, tuple):
                return (output[0] + add.to(output[0].dtype),) + tuple(output[1:])
            return output + add.to(output.dtype)
        return hook

    # ------------------------------------------------------------------ forward
    @property
    def has_mods(self) -> bool:
        return any(x is not None for x in (self.segment_emb, self.attn_bias, self.encoder, self.temp_head,
                                           self.task_head, self.reasoning)) or bool(self.prompt_only_ids)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head, then what the model's own forward does to logits (soft-capping, scaling). Prompt-only
        tokens ([INST], [/INST], the mask token) are never to be generated: when they are the last rows of
        the output matrix (the usual case after resizing) the head leaves them out, else their logits are -max."""
        head = self.base.get_output_embeddings()
        n_out = head.weight.shape[0]
        keep = n_out - len(self.prompt_only_ids)
        trim = (bool(self.prompt_only_ids) and isinstance(head, nn.Linear)
                and sorted(self.prompt_only_ids) == list(range(keep, n_out)))
        if trim:
            bias = head.bias[:keep] if head.bias is not None else None
            logits = F.linear(hidden, head.weight[:keep], bias)
        else:
            logits = head(hidden)
        if self._post_head is not None:
            logits = self._post_head(logits)
        if self.prompt_only_ids and not trim:
            logits = logits.index_fill(-1, torch.tensor(self.prompt_only_ids, device=logits.device),
                                       torch.finfo(logits.dtype).min)
        return logits

    def lm_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """LM targets without the prompt-only tokens (their logits are masked, so they are never targets)."""
        if not self.prompt_only_ids:
            return labels
        no = torch.tensor(self.prompt_only_ids, device=labels.device)
        return labels.masked_fill(torch.isin(labels, no), IGNORE)

    def _mask(self, sample_idx: torch.Tensor, dtype: torch.dtype, as_float: bool,
              window: int | None = None) -> torch.Tensor:
        """Block-diagonal causal mask (B,1,T,T): a token sees earlier tokens of its own sample only (and with
        a sliding window W, only itself and the W-1 tokens before it; a sample's tokens are contiguous)."""
        T = sample_idx.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=sample_idx.device).tril()
        if window is not None:
            causal = causal.triu(-(window - 1))
        same = (sample_idx[:, :, None] == sample_idx[:, None, :]) & (sample_idx[:, None, :] >= 0)
        allowed = (same & causal) | torch.eye(T, dtype=torch.bool, device=sample_idx.device)
        allowed = allowed[:, None]
        if not as_float:
            return allowed
        zero = torch.zeros((), dtype=dtype, device=sample_idx.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    def forward(self, batch: dict[str, torch.Tensor], cache=None) -> dict[str, torch.Tensor]:
        """`cache`: a transformers Cache to fill (the prompt pass of cached generation, see kv_cache.py)."""
        ids, seg, sidx = batch["input_ids"], batch["segment_ids"], batch["sample_idx"]
        pos = batch["position_ids"]
        n = batch["task_ids"].numel()
        inst = seg == SEG_INSTRUCTION
        x = self.base.get_input_embeddings()(ids)
        if self.training and self.neftune_alpha > 0:
            x = add_neftune_noise(x, sidx, self.neftune_alpha)
        ctx: dict[str, Any] = {}
        out: dict[str, torch.Tensor] = {}
        tok_emb = x
        if self.segment_emb is not None:
            x = x + self.segment_emb(seg).to(x.dtype)
        if self.encoder is not None:
            enc = self.encoder(tok_emb, pos, inst, sidx, n)
            fuse, inject = self.fusion(enc)
            gather = sidx.clamp(min=0)
            after = batch["after_inst"].unsqueeze(-1).to(x.dtype)
            x = x + fuse[gather].to(x.dtype) * after
            ctx.update(inject=inject, gather=gather, after=after, fuse=fuse)
            out["inst_enc"] = self.repr_proj(enc)
        as_float = self._orig_attn == "eager" or (self.attn_bias is not None and not self._bias_route)
        T = sidx.shape[1]
        masks = {w: self._mask(sidx, x.dtype, as_float, w if w is not None and w < T else None)
                 for w in set(self.windows)}
        mask = masks[self.windows[0]]               # the other layers' masks come from the attention hook
        ctx.update(masks=masks, passed=mask)
        if self.attn_bias is not None:
            cx = batch["complexity"].to(x.dtype)[sidx.clamp(min=0)]
            ctx.update(inst_key=inst.to(x.dtype), query_cx=cx, key_cx=cx)
        self._ctx = ctx
        with_cache: dict[str, Any] = {}
        if cache is not None:
            from .kv_cache import cache_argument

            with_cache = {cache_argument(self.base.base_model): cache}
        hidden = self.base.base_model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=cache is not None,
                                      **with_cache).last_hidden_state
        pooled = sample_mean(hidden, sidx, inst, n)
        out["pooled"] = pooled
        if self.reasoning is not None:
            hidden = self.reasoning(hidden)
        out["logits"] = self._logits(hidden)
        if self.temp_head is not None:
            out["temperature"] = self.temp_head(pooled)
        if self.task_head is not None:
            out["task_logits"] = self.task_head(pooled)
        return out

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, formatter: PromptFormatter, instruction: str, input: str = "", *,
                 max_new_tokens: int = 128, temperature: float | None = None, top_p: float = 0.95,
                 complexity: float | None = None, seed: int = 0, use_cache: bool = True) -> tuple[str, float]:
        """Sample a response; temperature None -> the head's prediction (or 0.7 without a head).
        A modified model decodes with a KV cache (kv_cache.py); `use_cache=False` recomputes the whole
        sequence at every token (the reference the cached path is tested against)."""
        self.eval()
        ids, segs = formatter.encode_prompt(instruction, input)
        dev = next(self.parameters()).device
        eos = formatter.stop_ids(getattr(self.base, "generation_config", None))
        gen = torch.Generator().manual_seed(seed)
        prompt_len = len(ids)
        used_temp = temperature
        if not self.has_mods:           # a plain HF model: transformers' generate with its KV cache
            used_temp = 0.7 if temperature is None else temperature
            torch.manual_seed(seed)
            sampling = dict(do_sample=True, temperature=used_temp, top_p=top_p, top_k=0) if used_temp > 1e-4 \
                else dict(do_sample=False)
            out_ids = self.base.generate(torch.tensor([ids], device=dev), attention_mask=torch.ones(1, len(ids),
                                         dtype=torch.long, device=dev), max_new_tokens=max_new_tokens,
                                         eos_token_id=sorted(eos) or None,
                                         pad_token_id=formatter.tok.pad_token_id or next(iter(eos), 0), **sampling)
            text = formatter.tok.decode(out_ids[0, prompt_len:], skip_special_tokens=True)
            return text.strip(), float(used_temp)
        decoder = None
        for _ in range(max_new_tokens):
            if not use_cache:
                out = self(_single(ids, segs, (complexity or 0.0) / 10.0, dev))
            elif decoder is None:
                from .kv_cache import CachedDecoder

                decoder = CachedDecoder(self, _single(ids, segs, (complexity or 0.0) / 10.0, dev))
                out = decoder.out
            else:
                out = decoder.step(ids[-1])
            if used_temp is None:
                used_temp = float(out["temperature"][0]) if "temperature" in out else 0.7
            logits = out["logits"][0, -1].float()
            nxt = _sample(logits, used_temp, top_p, gen)
            if nxt in eos:
                break
            ids.append(nxt)
            segs.append(SEG_RESPONSE)
        text = formatter.tok.decode(ids[prompt_len:], skip_special_tokens=True)
        return text.strip(), float(used_temp)

    # ------------------------------------------------------------------ save / load
    def save(self, out_dir: str | Path, tokenizer, extra_meta: dict[str, Any] | None = None,
             state: dict[str, torch.Tensor] | None = None) -> None:
        """Model + tokenizer + dataforge.json. Without modifications: a plain HF checkpoint. With them: a
        dataforge-type checkpoint (see hf_auto) that `AutoModelForCausalLM` loads after `import dataforge`.
        `state`: this model's full state dict when it was gathered elsewhere (FSDP)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.has_mods:
            from .hf_auto import save_modified

            save_modified(self, out, state)
        else:
            cfg = self.base.config
            cfg._attn_implementation = self._orig_attn        # the saved model must not need dataforge
            base_state = None if state is None else {k[len("base."):]: v for k, v in state.items()
                                                     if k.startswith("base.")}
            try:
                with quiet_hf():
                    self.base.save_pretrained(out, state_dict=base_state)
            finally:
                if self._bias_route:
                    cfg._attn_implementation = BIASED_ATTENTION
        tokenizer.save_pretrained(out)
        self.write_meta(out, extra_meta)

    def write_meta(self, out: Path, extra_meta: dict[str, Any] | None = None) -> None:
        meta = {"format": 1, "mods": self.mods, "n_tasks": self.n_tasks, "prompt_only_ids": self.prompt_only_ids,
                "plain_hf": not self.has_mods} | (extra_meta or {})
        (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def save_mods(self, out: Path) -> None:
        """Only the modules (not the base) to dataforge_mods.safetensors: next to a LoRA adapter."""
        from safetensors.torch import save_file

        own = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("base.")}
        if own:
            save_file(own, str(out / MODS_FILE))

    def load_mods(self, d: Path) -> None:
        """Load dataforge_mods.safetensors (modules saved apart from the base) when the directory has one."""
        from safetensors.torch import load_file

        if not (d / MODS_FILE).exists():
            return
        missing, unexpected = self.load_state_dict(load_file(str(d / MODS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("base.")]
        if missing or unexpected:
            raise DataforgeError(f"{d / MODS_FILE}: weights do not match the saved config "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def _called_by_us(ctx: dict[str, Any], args: tuple, kwargs: dict[str, Any]) -> bool:
    """True when a layer runs inside this model's forward (or its checkpoint recomputation): it then carries
    the mask `forward` passed in. A direct call of the base model (HF's own forward, generate) carries its
    own mask, and the hooks, which stay registered, must leave it alone."""
    passed = ctx.get("passed")
    return passed is not None and (kwargs.get("attention_mask") is passed or any(a is passed for a in args))


def _single(ids: list[int], segs: list[int], complexity: float, dev) -> dict[str, torch.Tensor]:
    T = len(ids)
    seg = torch.tensor([segs], device=dev)
    inst_pos = [i for i, s in enumerate(segs) if s == SEG_INSTRUCTION]
    last = inst_pos[-1] if inst_pos else -1
    return {"input_ids": torch.tensor([ids], device=dev), "position_ids": torch.arange(T, device=dev)[None],
            "segment_ids": seg, "sample_idx": torch.zeros((1, T), dtype=torch.long, device=dev),
            "after_inst": (torch.arange(T, device=dev) > last)[None],
            "task_ids": torch.tensor([-100], device=dev), "complexity": torch.tensor([complexity], device=dev),
            "temp_target": torch.tensor([float("nan")], device=dev)}


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    if temperature <= 1e-4:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < top_p
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
    return int(order[choice])


def load_instruct(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[InstructModel, Any, dict[str, Any]]:
    """Load a saved model directory (a run's `model/`, or the run dir containing it): a plain HF checkpoint,
    a dataforge-type one (with modifications), or a LoRA adapter (loaded onto its base with peft)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(run_dir)
    if not (d / META_FILE).exists() and (d / "model" / META_FILE).exists():
        d = d / "model"
    if not (d / META_FILE).exists():
        raise DataforgeError(f"{run_dir}: not a dataforge model directory (no {META_FILE})")
    meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    with quiet_hf():
        tok = AutoTokenizer.from_pretrained(d)
    config = json.loads((d / "config.json").read_text(encoding="utf-8")) if (d / "config.json").exists() else {}
    if meta.get("adapter"):
        from .lora import load_adapter_model

        model = load_adapter_model(d, meta, tok)
    elif config.get("model_type") == "dataforge":
        from .hf_auto import load_modified

        model = load_modified(d)
    else:       # a plain HF checkpoint (older runs: plus the modules in dataforge_mods.safetensors)
        with quiet_hf():
            base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        model = InstructModel(base, meta["mods"], meta.get("n_tasks", 0), meta.get("prompt_only_ids"))
        model.load_mods(d)
    return model.to(device).eval(), tok, meta
