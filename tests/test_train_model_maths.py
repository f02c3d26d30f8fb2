"""Exact behaviour of train/model.py's parts, in process and fast: masks against hand-written ones, the LM
head's trimming and masking of prompt-only tokens, the hooks against their formulas, token additions, seeded
sampling, and save/load round trips (file contents, dataforge.json, loaded values), including the older
checkpoint layout (plain HF weights + dataforge_mods.safetensors)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import INST_CLOSE, INST_OPEN, MASK_TOKEN  # noqa: E402
from dataforge.train.model import (META_FILE, MODS_FILE, InstructModel, _sample, add_inst_tokens,  # noqa: E402
                                   add_mask_token, attention_module, decoder_layers, load_instruct, quiet_hf)
from dataforge.train.tiny import tiny_gpt2, tiny_llama, tiny_model, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V = 400          # the tiny tokenizer's vocabulary


def _perturb(model: InstructModel, seed: int = 1, scale: float = 0.3) -> None:
    """Move the modules off their zero init, so a module loaded, saved or applied wrongly shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("base."):
                p.add_(scale * torch.randn_like(p))


def _own_state(model: InstructModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("base.")}


# ------------------------------------------------------------------ helpers of the module


def test_quiet_hf_silences_transformers_bars_and_restores_the_previous_state():
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        with quiet_hf():
            assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.is_progress_bar_enabled()
        with pytest.raises(RuntimeError), quiet_hf():
            raise RuntimeError("boom")
        assert hf_logging.is_progress_bar_enabled()             # restored on errors too
        hf_logging.disable_progress_bar()
        with quiet_hf():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()         # a caller's own silence is kept
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


class _Layer(nn.Module):
    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


class MixerAttention(nn.Module):
    pass


def test_decoder_layers_and_attention_modules_are_found_by_name_then_by_type():
    llama, gpt2 = tiny_llama(V), tiny_gpt2(V)
    assert decoder_layers(llama) is llama.model.layers and decoder_layers(gpt2) is gpt2.transformer.h
    assert attention_module(llama.model.layers[0]) is llama.model.layers[0].self_attn
    assert attention_module(gpt2.transformer.h[1]) is gpt2.transformer.h[1].attn        # the second name
    a, b, c = nn.Linear(2, 2), nn.Linear(2, 2), MixerAttention()
    assert attention_module(_Layer(attention=a, attn=b)) is b                 # names are tried in order
    assert attention_module(_Layer(self_attention=a)) is a
    assert attention_module(_Layer(mlp=a, mixer=c)) is c                      # else a child whose type says so
    layer = _Layer(mlp=a)
    layer.attn = "not a module"
    with pytest.raises(DataforgeError) as err:
        attention_module(layer)
    assert str(err.value) == "cannot find the attention module of _Layer"
    llama.config.num_hidden_layers = 3
    with pytest.raises(DataforgeError) as err:
        decoder_layers(llama)
    assert str(err.value) == "cannot find the 3 decoder layers of LlamaForCausalLM"


def test_prompt_only_tokens_are_special_never_split_and_added_once():
    tok = tiny_tokenizer()
    ids = add_inst_tokens(tok)
    assert ids == [V, V + 1] and tok.convert_ids_to_tokens(ids) == [INST_OPEN, INST_CLOSE]
    enc = tok(f"{INST_OPEN}Add the numbers{INST_CLOSE}", add_special_tokens=False)["input_ids"]
    assert enc[0] == V and enc[-1] == V + 1 and V not in enc[1:-1]
    assert tok.decode(enc, skip_special_tokens=True) == "Add the numbers"
    assert add_inst_tokens(tok) == ids and len(tok) == V + 2                # a no-op when present
    mask_id = add_mask_token(tok)
    assert isinstance(mask_id, int) and mask_id == V + 2 and tok.convert_ids_to_tokens(mask_id) == MASK_TOKEN
    for i in (*ids, mask_id):
        added = tok.added_tokens_decoder[i]
        assert added.special and not added.normalized and not added.lstrip and not added.rstrip


# ------------------------------------------------------------------ construction


def test_constructor_keeps_its_arguments_and_builds_the_named_modules():
    mods = TrainConfig.all_mods(fusion_dim=16, fusion_heads=2, fusion_layers=1, reasoning_paths=2).mods_dict()
    given = dict(mods)
    ids = [V, V + 1]
    model = InstructModel(tiny_llama(V + 2), given, 3, ids)
    given["fusion"] = False
    ids.append(5)
    assert model.mods == mods and model.mods is not given                     # copies, not the caller's
    assert model.n_tasks == 3 and model.prompt_only_ids == [V, V + 1]
    assert model.neftune_alpha == 0.0 and model._ctx == {}
    assert model.segment_emb.table.weight.shape == (5, 32)
    assert model.attn_bias.bias.shape == (2, 4) and model.attn_bias.by_complexity.shape == (2, 4)
    assert model.encoder.proj.out_features == 16 and len(model.encoder.layers) == 1
    assert model.encoder.layers[0].heads == 2
    assert model.fusion.n_layers == 2 and model.fusion.d_model == 32 and model.fusion.fuse.in_features == 16
    assert (model.repr_proj.in_features, model.repr_proj.out_features) == (16, 32)
    assert model.temp_head is not None and model.reasoning.up.out_features == 32 and model.reasoning.width == 16
    assert (model.task_head.in_features, model.task_head.out_features) == (32, 3)
    no_tasks = InstructModel(tiny_llama(V), mods, 0)
    assert no_tasks.task_head is None and no_tasks.prompt_only_ids == []
    plain = InstructModel(tiny_llama(V), {})
    assert all(m is None for m in (plain.segment_emb, plain.attn_bias, plain.encoder, plain.fusion,
                                   plain.repr_proj, plain.temp_head, plain.task_head, plain.reasoning))
    assert not plain.has_mods and plain.n_tasks == 0 and plain._hooks == []
    assert InstructModel(tiny_llama(V), {"task_head": True}, 1).task_head.out_features == 1    # one task
    only_bias = InstructModel(tiny_llama(V), {"attention_bias": True})
    assert only_bias.attn_bias.by_complexity is None and only_bias.has_mods
    assert InstructModel(tiny_llama(V), {}, 0, [7]).has_mods                  # prompt-only tokens alone


def test_hooks_and_routes_are_installed_only_where_needed():
    from dataforge.train.attention import BIASED_ATTENTION

    sdpa = InstructModel(tiny_model("llama", V, attn="sdpa"), {"attention_bias": True})
    assert sdpa._bias_route and sdpa._orig_attn == "sdpa" and sdpa._hooks == []
    assert sdpa.base.config._attn_implementation == BIASED_ATTENTION
    for i, layer in enumerate(decoder_layers(sdpa.base)):
        owner, index, inner = attention_module(layer).__dict__["_dataforge_route"]
        assert owner() is sdpa and index == i and inner == "sdpa"
    eager = InstructModel(tiny_model("llama", V, attn="eager"), {"attention_bias": True})
    assert not eager._bias_route and len(eager._hooks) == 2 and eager._orig_attn == "eager"
    assert "_dataforge_route" not in attention_module(decoder_layers(eager.base)[0]).__dict__
    assert eager.base.config._attn_implementation == "eager"
    # one window for every layer and no bias: the mask forward passes is every layer's, no hook
    assert InstructModel(tiny_model("mistral", V, attn="sdpa"), {"segment_embedding": True})._hooks == []
    assert len(InstructModel(tiny_model("qwen2", V, attn="sdpa"), {})._hooks) == 2        # full + sliding
    fused = InstructModel(tiny_model("llama", V, attn="sdpa"), {"fusion": True, "fusion_dim": 16,
                                                               "fusion_layers": 1, "fusion_heads": 2})
    assert len(fused._hooks) == 2                                             # one re-injection per layer
    no_impl = tiny_model("llama", V, attn="eager")
    no_impl.config._attn_implementation = None                                # eager when unset
    assert InstructModel(no_impl, {})._orig_attn == "eager"
    with pytest.raises(DataforgeError) as err:
        InstructModel(sdpa.base, {"attention_bias": True})
    assert str(err.value) == "this base model is already wrapped by an InstructModel with an attention bias"
    flash = tiny_model("llama", V)
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(DataforgeError) as err:
        InstructModel(flash, {})
    assert str(err.value).startswith("LlamaConfig (model_type 'llama'): attention implementation "
                                     "'flash_attention_2' is not supported.")


class _NotHF(nn.Module):
    """A causal LM that is not a transformers model: its config has no `_attn_implementation`."""

    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(hidden_size=8, num_hidden_layers=2, num_attention_heads=2)
        self.layers = nn.ModuleList([_Layer(self_attn=MixerAttention()) for _ in range(2)])
        self.base_model = self


def test_a_config_without_an_attention_implementation_counts_as_eager():
    model = InstructModel(_NotHF(), {"attention_bias": True})
    assert model._orig_attn == "eager" and not model._bias_route and len(model._hooks) == 2
    assert model.windows == [None, None] and model._post_head is None


# ------------------------------------------------------------------ masks and hooks


def _allowed(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


def test_mask_is_block_diagonal_causal_with_windows_padding_and_dtype():
    model = InstructModel(tiny_llama(V), {})
    sidx = torch.tensor([[0, 0, 0, 0, 1, 1, -1], [2, 2, 2, 3, 3, 3, 3]])
    full = torch.stack([_allowed(["1000000", "1100000", "1110000", "1111000", "0000100", "0000110", "0000001"]),
                        _allowed(["1000000", "1100000", "1110000", "0001000", "0001100", "0001110", "0001111"])])
    window3 = torch.stack([_allowed(["1000000", "1100000", "1110000", "0111000", "0000100", "0000110", "0000001"]),
                           _allowed(["1000000", "1100000", "1110000", "0001000", "0001100", "0001110", "0000111"])])
    got = model._mask(sidx, torch.float32, False)
    assert got.dtype == torch.bool and got.shape == (2, 1, 7, 7)
    assert torch.equal(got[:, 0], full)
    assert torch.equal(model._mask(sidx, torch.float32, False, 3)[:, 0], window3)
    assert torch.equal(model._mask(sidx, torch.float32, False, 7)[:, 0], full)       # as wide as the row
    half = model._mask(sidx, torch.float16, True, 3)
    low = torch.finfo(torch.float16).min
    assert half.dtype == torch.float16 and half.shape == (2, 1, 7, 7)
    assert torch.equal(half[:, 0], torch.where(window3, torch.tensor(0.0, dtype=torch.float16),
                                               torch.tensor(low, dtype=torch.float16)))
    assert float(model._mask(sidx, torch.float32, True)[0, 0, 0, 1]) == torch.finfo(torch.float32).min


def _fused(arch: str = "llama"):
    model = InstructModel(tiny_model(arch, V), {"fusion": True, "fusion_dim": 16, "fusion_layers": 1,
                                                "fusion_heads": 2})
    return model


def test_inject_hook_adds_the_gated_vector_after_the_instruction_only_inside_our_forward():
    model = _fused()
    torch.manual_seed(0)
    B, T, D, N, L = 2, 5, 32, 3, 2
    inject = torch.randn(N, L, D)
    gather = torch.tensor([[0, 0, 1, 1, 1], [2, 2, 2, 2, 0]])
    after = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.float32)[..., None]
    passed = torch.zeros(B, 1, T, T)
    model._ctx = {"inject": inject, "gather": gather, "after": after, "passed": passed}
    out = torch.randn(B, T, D)
    expected = out.clone()
    for b in range(B):
        for t in range(T):
            expected[b, t] += inject[gather[b, t], 1] * after[b, t, 0]
    hook = model._inject_hook(1)
    layer = decoder_layers(model.base)[1]
    got = hook(layer, (), {"attention_mask": passed}, out)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert torch.allclose(hook(layer, (out, passed), {}, out), expected, atol=1e-6, rtol=0)   # mask passed by position
    extra = torch.ones(1)
    got_tuple = hook(layer, (), {"attention_mask": passed}, (out, extra, None))
    assert len(got_tuple) == 3 and got_tuple[1] is extra and got_tuple[2] is None
    assert torch.allclose(got_tuple[0], expected, atol=1e-6, rtol=0)
    half = hook(layer, (), {"attention_mask": passed}, out.half())
    assert half.dtype == torch.float16
    half_tuple = hook(layer, (), {"attention_mask": passed}, (out.half(), torch.ones(2)))
    assert half_tuple[0].dtype == torch.float16                           # the hidden states' dtype
    assert hook(layer, (), {"attention_mask": passed.clone()}, out) is None     # a direct call of the base
    model._ctx = {"gather": gather, "after": after, "passed": passed}
    assert hook(layer, (), {"attention_mask": passed}, out) is None             # no fusion state: nothing


def test_attention_hook_puts_each_layers_window_and_bias_on_its_last_keys():
    model = InstructModel(tiny_model("qwen2", V, attn="eager"), {"attention_bias": True,
                                                                 "attention_bias_complexity": True})
    _perturb(model)
    assert model.windows == [None, 8]
    B, T, K = 2, 12, 8
    torch.manual_seed(2)
    inst_key = (torch.rand(B, T) > 0.5).float()
    key_cx = torch.rand(B, T)
    masks = {None: torch.zeros(B, 1, 1, T), 8: torch.full((B, 1, 1, K), -1.0)}     # a decoding step's masks
    passed = masks[None]
    model._ctx = {"masks": masks, "passed": passed, "inst_key": inst_key, "key_cx": key_cx}
    layers = decoder_layers(model.base)
    ab = model.attn_bias
    for i, keys in ((0, T), (1, K)):
        args, kwargs = model._attention_hook(i)(attention_module(layers[i]), ("x",), {"attention_mask": passed})
        assert args == ("x",)
        bias = (ab.bias[i][None, :, None, None] + ab.by_complexity[i][None, :, None, None]
                * key_cx[:, None, None, -keys:]) * inst_key[:, None, None, -keys:]
        assert kwargs["attention_mask"].shape == (B, 4, 1, keys)
        assert torch.allclose(kwargs["attention_mask"], masks[model.windows[i]] + bias, atol=1e-6, rtol=0)
    assert model._attention_hook(0)(layers[0].self_attn, (), {"attention_mask": passed.clone()}) is None
    model._ctx = {"masks": masks, "passed": passed}                   # no bias state: the window's mask alone
    _, kwargs = model._attention_hook(1)(layers[1].self_attn, (), {"attention_mask": passed})
    assert kwargs["attention_mask"] is masks[8]
    half = {w: m.half() for w, m in masks.items()}                  # a half-precision model: the bias follows
    model._ctx = {"masks": half, "passed": half[None], "inst_key": inst_key, "key_cx": key_cx}
    _, kwargs = model._attention_hook(1)(layers[1].self_attn, (), {"attention_mask": half[None]})
    assert kwargs["attention_mask"].dtype == torch.float16


# ------------------------------------------------------------------ logits


def _with_biased_head(vocab: int) -> nn.Module:
    base = tiny_llama(vocab)
    torch.manual_seed(4)
    head = nn.Linear(32, vocab, bias=True)
    base.set_output_embeddings(head)
    return base


@torch.no_grad()
def test_logits_leave_out_trailing_prompt_only_rows_with_their_bias():
    base = _with_biased_head(V + 2)
    head = base.get_output_embeddings()
    hidden = torch.randn(2, 3, 32)
    full = hidden @ head.weight.T + head.bias
    trimmed = InstructModel(base, {}, 0, [V + 1, V])._logits(hidden)        # any order of the last rows
    assert trimmed.shape == (2, 3, V) and torch.allclose(trimmed, full[..., :V], atol=1e-5, rtol=0)
    assert torch.allclose(InstructModel(base, {})._logits(hidden), full, atol=1e-5, rtol=0)
    inner = InstructModel(base, {}, 0, [3, V + 1])._logits(hidden)          # not the last rows: masked instead
    assert inner.shape == (2, 3, V + 2)
    low = torch.finfo(torch.float32).min
    assert bool((inner[..., 3] == low).all()) and bool((inner[..., V + 1] == low).all())
    keep = [i for i in range(V + 2) if i not in (3, V + 1)]
    assert torch.allclose(inner[..., keep], full[..., keep], atol=1e-5, rtol=0)
    no_bias = tiny_llama(V + 1)
    w = no_bias.get_output_embeddings().weight
    assert torch.allclose(InstructModel(no_bias, {}, 0, [V])._logits(hidden), hidden @ w[:V].T, atol=1e-5, rtol=0)


@torch.no_grad()
def test_logits_apply_the_models_soft_capping_before_masking():
    base = tiny_model("gemma2", V, attn="eager")
    w = base.get_output_embeddings().weight
    hidden = 150 * torch.randn(1, 4, 32)
    raw = hidden @ w.T
    capped = 30.0 * torch.tanh(raw / 30.0)
    assert float(raw.abs().max()) > 30                                     # the cap acts
    assert torch.allclose(InstructModel(base, {})._logits(hidden), capped, atol=1e-4, rtol=0)
    masked = InstructModel(base, {}, 0, [5])._logits(hidden)
    assert bool((masked[..., 5] == torch.finfo(torch.float32).min).all())    # not -30: masked after the cap
    assert torch.allclose(masked[..., 6:], capped[..., 6:], atol=1e-4, rtol=0)


# ------------------------------------------------------------------ sampling


def test_sampling_is_reproducible_from_its_own_generator_alone():
    torch.manual_seed(0)
    logits = torch.randn(50)

    def draws(seed: int, global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)
        gen = torch.Generator().manual_seed(seed)
        return [_sample(logits, 1.5, 0.95, gen) for _ in range(30)]

    first = draws(3, 0)
    assert draws(3, 99) == first and len(set(first)) > 5
    assert draws(4, 0) != first


def test_nucleus_keeps_the_tokens_whose_preceding_mass_is_below_top_p():
    logits = torch.zeros(4)                   # four tokens of probability 0.25 each (exact in float32)
    gen = torch.Generator().manual_seed(0)
    half = {_sample(logits, 1.0, 0.5, gen) for _ in range(200)}
    assert len(half) == 2                     # mass before the third token is 0.5, not below 0.5
    gen = torch.Generator().manual_seed(0)
    assert len({_sample(logits, 1.0, 0.5001, gen) for _ in range(200)}) == 3
    gen = torch.Generator().manual_seed(0)
    assert {_sample(torch.tensor([0.0, 5.0, 1.0]), 1.0, 1e-6, gen) for _ in range(50)} == {1}
    near = torch.tensor([0.0, 1e-5])
    assert {_sample(near, 1e-4, 1.0, gen) for _ in range(50)} == {1}        # the greedy limit: argmax, no draw
    assert {_sample(near, 2e-4, 1.0, gen) for _ in range(50)} == {0, 1}     # just above it: a real draw


# ------------------------------------------------------------------ save / load


def test_write_meta_writes_the_exact_json_and_extra_fields_win(tmp_path):
    out = tmp_path
    InstructModel(tiny_llama(V), {}).write_meta(out, {"run": "café", "plain_hf": False})
    assert (out / META_FILE).read_bytes().decode("utf-8") == (
        '{\n  "format": 1,\n  "mods": {},\n  "n_tasks": 0,\n  "prompt_only_ids": [],\n  "plain_hf": false,\n'
        '  "run": "café"\n}\n')
    InstructModel(tiny_llama(V), {"segment_embedding": True}, 2, [5]).write_meta(out)
    assert json.loads((out / META_FILE).read_text(encoding="utf-8")) == {
        "format": 1, "mods": {"segment_embedding": True}, "n_tasks": 2, "prompt_only_ids": [5], "plain_hf": False}
    InstructModel(tiny_llama(V), {}).write_meta(out)
    assert json.loads((out / META_FILE).read_text(encoding="utf-8"))["plain_hf"] is True


def test_modules_saved_apart_from_the_base_load_back_exactly(tmp_path):
    from safetensors.torch import load_file

    mods = {"segment_embedding": True, "temperature_head": True, "task_head": True}
    model = InstructModel(tiny_llama(V), mods, 3)
    _perturb(model)
    model.save_mods(tmp_path)
    saved = load_file(str(tmp_path / MODS_FILE))
    own = _own_state(model)
    assert saved.keys() == own.keys() and len(own) == 7
    assert all(torch.equal(saved[k], own[k]) for k in own)
    fresh = InstructModel(tiny_llama(V, seed=5), mods, 3)
    base_before = {k: v.clone() for k, v in fresh.base.state_dict().items()}
    fresh.load_mods(tmp_path)
    assert all(torch.equal(fresh.state_dict()[k], own[k]) for k in own)
    assert all(torch.equal(fresh.base.state_dict()[k], v) for k, v in base_before.items())   # base untouched
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    InstructModel(tiny_llama(V), {}).save_mods(plain_dir)
    assert list(plain_dir.iterdir()) == []                                  # nothing to save: no file
    untouched = InstructModel(tiny_llama(V), mods, 3)
    before = {k: v.clone() for k, v in _own_state(untouched).items()}
    untouched.load_mods(plain_dir)                                          # no file: nothing loaded
    assert all(torch.equal(_own_state(untouched)[k], v) for k, v in before.items())


def test_modules_that_do_not_match_the_saved_ones_are_refused(tmp_path):
    model = InstructModel(tiny_llama(V), {"segment_embedding": True, "temperature_head": True})
    model.save_mods(tmp_path)
    more = InstructModel(tiny_llama(V), {"segment_embedding": True, "temperature_head": True,
                                         "reasoning_head": True, "reasoning_paths": 2})
    with pytest.raises(DataforgeError) as err:
        more.load_mods(tmp_path)
    assert str(err.value) == (f"{tmp_path / MODS_FILE}: weights do not match the saved config (missing "
                              "['reasoning.up.weight', 'reasoning.up.bias', 'reasoning.back.weight'], unexpected [])")
    fewer = InstructModel(tiny_llama(V), {"segment_embedding": True})
    with pytest.raises(DataforgeError) as err:
        fewer.load_mods(tmp_path)
    assert str(err.value) == (f"{tmp_path / MODS_FILE}: weights do not match the saved config (missing [], "
                              "unexpected ['temp_head.mlp.0.bias', 'temp_head.mlp.0.weight', 'temp_head.mlp.2.bias'])")


def _older_checkpoint(d, mods: dict, n_tasks: int, prompt_only: list[int], dtype=torch.float32):
    """A model directory as runs before the dataforge model type wrote it: the base as a plain HF checkpoint,
    the modules in dataforge_mods.safetensors."""
    tok = tiny_tokenizer()
    model = InstructModel(tiny_llama(V), mods, n_tasks, prompt_only)
    _perturb(model)
    with torch.no_grad():
        for p in model.base.parameters():                   # representable in dtype: the loaded copy is exact
            p.copy_(p.to(dtype).float())
    model.base.to(dtype).save_pretrained(d)
    model.base.float()
    tok.save_pretrained(d)
    model.save_mods(d)
    model.write_meta(d, {"prompt_format": "inst"})
    return model


def test_older_checkpoints_load_in_float32_with_their_modules(tmp_path):
    mods = {"segment_embedding": True, "task_head": True, "temperature_head": True}
    d = tmp_path / "old"
    model = _older_checkpoint(d, mods, 3, [7], dtype=torch.bfloat16)
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"
    loaded, tok, meta = load_instruct(d)
    assert meta["prompt_format"] == "inst" and meta["n_tasks"] == 3 and len(tok) == V
    assert isinstance(loaded, InstructModel) and not loaded.training
    assert loaded.mods == mods and loaded.n_tasks == 3 and loaded.prompt_only_ids == [7]
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    want = model.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    # a meta file of before n_tasks / prompt_only_ids were written: no task head, no prompt-only tokens
    meta_file = json.loads((d / META_FILE).read_text())
    del meta_file["n_tasks"], meta_file["prompt_only_ids"]
    (d / META_FILE).write_text(json.dumps(meta_file))
    (d / MODS_FILE).unlink()
    InstructModel(tiny_llama(V), {"segment_embedding": True, "temperature_head": True}).save_mods(d)
    bare, _, _ = load_instruct(d)
    assert bare.task_head is None and bare.n_tasks == 0 and bare.prompt_only_ids == []
    on_meta, _, _ = load_instruct(d, device="meta")
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


def test_run_directory_and_model_directory_both_load(tmp_path):
    run = tmp_path / "run"
    _older_checkpoint(run / "model", {"segment_embedding": True}, 0, [])
    a, _, _ = load_instruct(run)
    b, _, _ = load_instruct(run / "model")
    assert torch.equal(a.segment_emb.table.weight, b.segment_emb.table.weight)
    _older_checkpoint(tmp_path / "both", {}, 0, [])
    _older_checkpoint(tmp_path / "both" / "model", {"segment_embedding": True}, 0, [])
    assert load_instruct(tmp_path / "both")[0].segment_emb is None      # its own dataforge.json comes first


def test_plain_save_writes_a_gathered_state_under_the_base_names(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    model = InstructModel(tiny_model("llama", V, attn="eager"), {})
    state = {k: v + 0.5 for k, v in model.state_dict().items()}
    assert all(k.startswith("base.") for k in state)
    tmp_path.joinpath("m").mkdir()                                             # an existing directory is fine
    model.save(tmp_path / "m", tok, {"prompt_format": "auto"}, state=state)
    assert model.base.config._attn_implementation == "eager"
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "m").state_dict()
    assert saved.keys() == model.base.state_dict().keys()
    assert all(torch.equal(saved[k], state["base." + k]) for k in saved)
    assert json.loads((tmp_path / "m" / META_FILE).read_text())["plain_hf"] is True
    model.save(tmp_path / "deep" / "er", tok)                                # parents are made
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "deep" / "er").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.base.state_dict().items())


# ------------------------------------------------------------------ devices


def test_tensors_made_here_follow_the_inputs_device_not_torchs_default_device():
    """Under `torch.set_default_device` (here: meta) every tensor the model makes must still sit on its
    inputs' device, or CPU inputs meet tensors elsewhere (wrong values or a device error)."""
    from dataforge.train.data import SEG_INSTRUCTION, SEG_RESPONSE, SEG_TEMPLATE
    from dataforge.train.model import _single

    model = InstructModel(tiny_llama(V), {}, 0, [7])
    labels = torch.tensor([[1, 7, 9, -100]])
    sidx = torch.tensor([[0, 0, 1, -1]])
    hidden = torch.randn(1, 4, 32)
    segs = [SEG_TEMPLATE, SEG_INSTRUCTION, SEG_INSTRUCTION, SEG_INSTRUCTION, SEG_TEMPLATE, SEG_RESPONSE]
    with torch.device("meta"):
        assert model.lm_labels(labels).tolist() == [[1, -100, 9, -100]]
        batch = _single([5, 6, 7, 8, 9, 10], segs, 0.25, torch.device("cpu"))
        assert {k: v.device.type for k, v in batch.items()} == {k: "cpu" for k in batch}
        assert batch["after_inst"].tolist() == [[False, False, False, False, True, True]]
        assert batch["complexity"].tolist() == [0.25] and batch["task_ids"].tolist() == [-100]
        for as_float in (False, True):
            mask = model._mask(sidx, torch.float32, as_float, 2)
            assert mask.device.type == "cpu"
        assert model._mask(sidx, torch.float32, False, 2)[0, 0].tolist() == [
            [True, False, False, False], [True, True, False, False], [False, False, True, False],
            [False, False, False, True]]
        logits = model._logits(hidden)
        assert logits.device.type == "cpu" and bool((logits[..., 7] == torch.finfo(torch.float32).min).all())


def test_adapter_directories_load_onto_their_base_with_the_modules(tmp_path):
    pytest.importorskip("peft")
    from dataforge.train.lora import apply_lora, attach, save_adapter
    from dataforge.train.model import _single

    tok = tiny_tokenizer()
    base_dir = tmp_path / "base"
    tiny_llama(V).save_pretrained(base_dir)
    cfg = TrainConfig(lora=True, lora_r=4, segment_embedding=True)
    model = tiny_llama(V)                                        # the same seed: the saved base's weights
    peft_model = apply_lora(model, cfg)
    imodel = InstructModel(model, cfg.mods_dict())
    attach(imodel, peft_model)
    _perturb(imodel)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    save_adapter(tmp_path / "adapter", imodel, peft_model, tok, {"adapter": {"base_model": str(base_dir)}})
    assert not (tmp_path / "adapter" / "config.json").exists()              # an adapter has no config.json
    loaded, tok2, meta = load_instruct(tmp_path / "adapter")
    assert meta["adapter"] == {"base_model": str(base_dir)} and len(tok2) == V
    assert loaded.__dict__["peft_model"] is not None and not loaded.training
    batch = _single([5, 6, 7, 8], [1, 2, 2, 4], 0.0, torch.device("cpu"))
    imodel.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(batch)["logits"], imodel(batch)["logits"], atol=1e-5, rtol=0)
        assert torch.equal(loaded.segment_emb.table.weight, imodel.segment_emb.table.weight)


# ------------------------------------------------------------------ forward


def test_forward_adds_noise_only_while_training_and_asks_for_no_cache_without_one():
    from dataforge.train.model import _single

    model = InstructModel(tiny_model("llama", V, attn="sdpa"), {"segment_embedding": True})
    batch = _single([5, 6, 7, 8, 9, 10], [1, 2, 2, 3, 4, 4], 0.0, torch.device("cpu"))
    seen = []
    model.base.base_model.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True)
    model.eval()
    with torch.no_grad():
        clean = model(batch)["logits"]
        assert seen[-1]["use_cache"] is False and seen[-1]["attention_mask"] is model._ctx["passed"]
        assert not any("past_key" in k or k == "cache_params" for k in seen[-1])
        model.neftune_alpha = 0.5
        assert torch.equal(model(batch)["logits"], clean)                       # evaluation: no noise
        model.train()
        assert float((model(batch)["logits"] - clean).abs().max()) > 1e-4       # training: noise
        model.neftune_alpha = 0.0
        rng = torch.get_rng_state()
        assert torch.allclose(model(batch)["logits"], clean, atol=1e-6, rtol=0)  # training without alpha: none,
        assert torch.equal(torch.get_rng_state(), rng)                          # and no random draw for it


@pytest.mark.parametrize("attn,mods,kind", [("sdpa", {}, torch.bool), ("eager", {}, torch.float32),
                                            ("sdpa", {"attention_bias": True}, torch.bool),
                                            ("eager", {"attention_bias": True}, torch.float32)])
def test_forward_leaves_each_windows_mask_of_the_kind_its_kernel_reads(attn, mods, kind):
    from dataforge.train.data import collate

    model = InstructModel(tiny_model("qwen2", V, attn=attn), mods)              # windows: full, 8
    _perturb(model)
    exs = _examples()
    batch = collate([exs[:2], exs[2:]], 0)
    T = batch["input_ids"].shape[1]
    assert T > 8
    with torch.no_grad():
        model(batch)
    ctx = model._ctx
    assert set(ctx["masks"]) == {None, 8} and ctx["passed"] is ctx["masks"][None]
    for w in (None, 8):
        assert ctx["masks"][w].dtype == kind
        assert torch.equal(ctx["masks"][w], model._mask(batch["sample_idx"], torch.float32, kind != torch.bool, w))
    assert ("inst_key" in ctx) == bool(mods)
    if mods:
        cx = batch["complexity"][batch["sample_idx"].clamp(min=0)]
        assert torch.equal(ctx["inst_key"], (batch["segment_ids"] == 2).float())
        assert torch.equal(ctx["key_cx"], cx) and torch.equal(ctx["query_cx"], cx)


def _examples():
    from dataforge.train.data import PromptFormatter, TaskInfo, encode_records
    from dataforge.train.tiny import toy_records

    tok = tiny_tokenizer(chat_template=True)
    cfg = TrainConfig()
    return encode_records(toy_records(4), PromptFormatter(tok, "auto", False, 256),
                          TaskInfo(["classification", "generation", "math"], cfg.task_kinds, cfg.temperature_by_kind),
                          {})


def test_modified_save_writes_a_gathered_state(tmp_path):
    tok = tiny_tokenizer()
    model = InstructModel(tiny_llama(V), {"segment_embedding": True})
    _perturb(model)
    state = {k: v + 0.25 for k, v in model.state_dict().items()}
    model.save(tmp_path / "m", tok, state=state)
    loaded, _, meta = load_instruct(tmp_path / "m")
    assert meta["plain_hf"] is False
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_a_bfloat16_model_keeps_its_dtype_through_the_modules():
    """Modules made in float32 around a bfloat16 base add in the base's dtype (as the whole model cast to
    bfloat16 does), and the per-batch tensors the attention hooks and kernel read are in the model's dtype."""
    from dataforge.train.model import _single

    batch = _single([5, 6, 7, 8, 9, 10], [1, 2, 2, 3, 4, 4], 0.3, torch.device("cpu"))
    mixed = InstructModel(tiny_model("llama", V, attn="eager").to(torch.bfloat16), {"segment_embedding": True})
    _perturb(mixed)
    assert mixed.segment_emb.table.weight.dtype == torch.float32
    whole = InstructModel(tiny_model("llama", V, attn="eager"), {"segment_embedding": True})
    whole.load_state_dict(mixed.state_dict())
    whole.to(torch.bfloat16)
    with torch.no_grad():
        got = mixed(batch)["logits"]
        assert got.dtype == torch.bfloat16 and torch.equal(got, whole(batch)["logits"])
    mods = {"attention_bias": True, "attention_bias_complexity": True, "fusion": True, "fusion_dim": 16,
            "fusion_layers": 1, "fusion_heads": 2}
    for attn in ("eager", "sdpa"):
        model = InstructModel(tiny_model("llama", V, attn=attn), mods).to(torch.bfloat16)
        with torch.no_grad():
            assert model(batch)["logits"].dtype == torch.bfloat16
        ctx = model._ctx
        for key in ("inst_key", "key_cx", "query_cx", "after"):
            assert ctx[key].dtype == torch.bfloat16, key
        assert float(ctx["key_cx"][0, 0]) == float(torch.tensor(0.3).to(torch.bfloat16))
