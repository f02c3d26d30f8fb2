"""Modified checkpoints outside dataforge's loader: AutoModelForCausalLM after `import dataforge` (same
logits as load_instruct; refused without it), KV-cache generation equal to the uncached path, and
export-model's exact folds and refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from dataforge.cli import app  # noqa: E402
from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import PromptFormatter  # noqa: E402
from dataforge.train.export import export_model  # noqa: E402
from dataforge.train.hf_auto import single_sample_batch  # noqa: E402
from dataforge.train.kv_cache import CachedDecoder  # noqa: E402
from dataforge.train.model import InstructModel, _single, add_inst_tokens, load_instruct  # noqa: E402
from dataforge.train.tiny import tiny_gpt2, tiny_llama, tiny_tokenizer  # noqa: E402
from train_helpers import assert_cached_steps_match  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ARCHS = {"llama": (tiny_llama, True), "gpt2": (tiny_gpt2, False),
         "gpt2-eager": (lambda v: tiny_gpt2(v, attn="eager"), False)}


def _trained_like(cfg: TrainConfig, arch: str = "llama", scale: float = 0.3):
    """A modified model whose modules moved off their no-op init (as training would move them)."""
    build, chat = ARCHS[arch]
    tok = tiny_tokenizer(chat_template=chat)
    prompt_only = add_inst_tokens(tok) if cfg.inst_tokens else []
    base = build(len(tok))
    if prompt_only:
        base.resize_token_embeddings(len(tok))
    model = InstructModel(base, cfg.mods_dict(), 3, prompt_only)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("base."):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval(), tok


def _probe(tok, inst_tokens: bool):
    ids, segs = PromptFormatter(tok, "auto", inst_tokens, 256).encode_prompt("Add the two numbers.", "2 3")
    return torch.tensor([ids]), torch.tensor([segs])


AUTO_SCRIPT = r"""
import sys, torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)                            # the test process's count: bitwise-equal reductions
path = sys.argv[1]
try:
    AutoModelForCausalLM.from_pretrained(path)
    print("LOADED WITHOUT DATAFORGE")
except (ValueError, KeyError) as exc:
    print("refused:", "dataforge" in str(exc))
import dataforge                                    # registers the architecture (transformers already imported)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
ids, segs = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(ids, segment_ids=segs, complexity=4).logits, sys.argv[3])
print(type(model).__name__)
"""


def test_automodel_loads_a_modified_checkpoint_with_load_instruct_logits(tmp_path):
    model, tok = _trained_like(TrainConfig.all_mods())
    model.save(tmp_path / "m", tok, {"prompt_format": "chat"})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "dataforge" and config["architectures"] == ["DataforgeForCausalLM"]
    ids, segs = _probe(tok, True)
    torch.save((ids, segs), tmp_path / "probe.pt")
    res = subprocess.run([sys.executable, "-c", AUTO_SCRIPT, str(tmp_path / "m"), str(tmp_path / "probe.pt"),
                          str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["refused:", "True", "DataforgeForCausalLM"]
    via_auto = torch.load(tmp_path / "logits.pt")
    loaded, _, _ = load_instruct(tmp_path / "m")
    with torch.no_grad():
        via_df = loaded(single_sample_batch(ids, None, segs, 4))["logits"]
        in_memory = model(single_sample_batch(ids, None, segs, 4))["logits"]
    assert torch.equal(via_df, in_memory), "load_instruct changed the logits"
    assert torch.equal(via_auto, via_df), "AutoModelForCausalLM's logits differ from load_instruct's"
    from transformers import AutoModelForCausalLM

    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with pytest.raises(DataforgeError, match="segment_ids"):
        auto(ids)
    with pytest.raises(DataforgeError, match="does not support"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m", quantization_config={"load_in_4bit": True})


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mods", ["all", "segment+bias", "fusion+reasoning"])
def test_kv_cache_generation_equals_recomputing_everything(arch, mods):
    cfg = {"all": TrainConfig.all_mods(), "segment+bias": TrainConfig(segment_embedding=True, attention_bias=True),
           "fusion+reasoning": TrainConfig(fusion=True, reasoning_head=True)}[mods]
    model, tok = _trained_like(cfg, arch)
    fmt = PromptFormatter(tok, "auto", cfg.inst_tokens, 256)
    ids, segs = fmt.encode_prompt("Write a short poem about the sea.")
    # step by step: the cached logits of each new token equal the full recomputation's last position
    decoder = CachedDecoder(model, _single(ids, segs, 0.4, torch.device("cpu")))
    assert_cached_steps_match(model, decoder, ids, segs, 6)
    a = model.generate(fmt, "Write a short poem about the sea.", max_new_tokens=24, temperature=0.0, complexity=4)
    b = model.generate(fmt, "Write a short poem about the sea.", max_new_tokens=24, temperature=0.0, complexity=4,
                       use_cache=False)
    assert a == b


def test_transformers_generate_through_automodel_uses_the_cache(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = _trained_like(TrainConfig.all_mods())
    model.save(tmp_path / "m", tok, {})
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    fmt = PromptFormatter(tok, "auto", True, 256)
    ids, segs = fmt.encode_prompt("Write a short poem about the sea.")
    ours, _ = model.generate(fmt, "Write a short poem about the sea.", max_new_tokens=16, temperature=0.0,
                             complexity=5, use_cache=False)
    out = auto.generate(torch.tensor([ids]), segment_ids=torch.tensor([segs]), complexity=5, max_new_tokens=16,
                        do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert tok.decode(out[0, len(ids):], skip_special_tokens=True).strip() == ours


def test_export_folds_exactly_or_refuses(tmp_path):
    # equal segment rows (one shared vector) fold into the embeddings; a tied head is untied first
    model, tok = _trained_like(TrainConfig(segment_embedding=True, temperature_head=True, attention_bias=True))
    with torch.no_grad():
        model.segment_emb.table.weight[:] = model.segment_emb.table.weight[1]
        model.attn_bias.bias.zero_()                                          # at its no-op init: dropped
    model.base.config.tie_word_embeddings = True
    model.base.lm_head.weight = model.base.model.embed_tokens.weight
    model.save(tmp_path / "m", tok, {"prompt_format": "chat"})
    r = export_model(tmp_path / "m", tmp_path / "plain", merge_mods=True)
    assert set(r["folded"]) == {"segment_embedding"} and set(r["dropped"]) == {"temperature_head", "attention_bias"}
    assert r["exact"] is True and r["max_logit_difference"] < 1e-5
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is False
    # rows that differ: refused, nothing written; with --drop-unfoldable written and the change reported
    model2, tok2 = _trained_like(TrainConfig(segment_embedding=True, inst_tokens=True))
    model2.save(tmp_path / "m2", tok2, {"prompt_format": "chat"})
    res = CliRunner().invoke(app, ["export-model", str(tmp_path / "m2"), "-o", str(tmp_path / "p2"), "--merge-mods"])
    assert res.exit_code != 0 and not (tmp_path / "p2").exists()
    with pytest.raises(DataforgeError, match="segment_embedding: a different vector per segment"):
        export_model(tmp_path / "m2", tmp_path / "p2", merge_mods=True)
    with pytest.raises(DataforgeError, match="--merge-mods"):
        export_model(tmp_path / "m2", tmp_path / "p2")
    r2 = export_model(tmp_path / "m2", tmp_path / "p2", merge_mods=True, drop_unfoldable=True)
    assert set(r2["not_exportable"]) == {"segment_embedding", "inst_tokens"} and r2["exact"] is False
    assert r2["max_logit_difference"] > 1e-3
    gen_cfg = json.loads((tmp_path / "p2" / "generation_config.json").read_text())
    assert sorted(gen_cfg["suppress_tokens"]) == sorted(model2.prompt_only_ids)


@pytest.mark.parametrize("name", ["segment_embedding", "attention_bias", "fusion", "reasoning_head"])
def test_plan_fold_drops_untrained_modules_and_refuses_any_trained_weight(name):
    from dataforge.train.fold import plan_fold

    flags = {"segment_embedding": dict(segment_embedding=True),
             "attention_bias": dict(attention_bias=True, attention_bias_complexity=True),
             "fusion": dict(fusion=True), "reasoning_head": dict(reasoning_head=True)}[name]
    model, _ = _trained_like(TrainConfig(**flags), scale=0.0)          # every module at its no-op init
    report = plan_fold(model)
    assert set(report.dropped) == {name} and not report.not_exportable and not report.folded
    assert "zero" in report.dropped[name] or "identity" in report.dropped[name]
    weights = {"segment_embedding": ["segment_emb.table.weight"],
               "attention_bias": ["attn_bias.bias", "attn_bias.by_complexity"],
               "fusion": ["fusion.fuse.weight", "fusion.fuse.bias", "fusion.inject.weight"],
               "reasoning_head": ["reasoning.back.weight", "reasoning.back.bias"]}[name]
    expected = {"segment_embedding": "a different vector per segment (rows differ by up to 0.5)",
                "attention_bias": "biases attention towards instruction tokens",
                "fusion": "a second network encodes the instruction",
                "reasoning_head": "a non-linear layer before the LM head"}[name]
    for w in weights:                                                  # any one weight off zero: refused
        model, _ = _trained_like(TrainConfig(**flags), scale=0.0)
        with torch.no_grad():
            model.get_parameter(w).view(-1)[-1] = 0.5
        report = plan_fold(model)
        assert set(report.not_exportable) == {name} and not report.dropped, w
        assert report.not_exportable[name].startswith(expected)


def test_fold_report_texts():
    from dataforge.train.fold import plan_fold

    model, _ = _trained_like(TrainConfig(segment_embedding=True, temperature_head=True, task_cls_weight=0.1,
                                         inst_tokens=True), scale=0.0)
    with torch.no_grad():
        model.segment_emb.table.weight[2] = 0.5                      # instruction row (1 is the template)
        model.segment_emb.table.weight[4] = 1.0                      # response row; template row stays 0
    r = plan_fold(model)
    assert r.as_dict() == {"folded": {}, "dropped": {
        "temperature_head": "predicts a sampling temperature, logits unchanged: pass a temperature to your sampler "
                            "(dataforge generate --json shows the head's choice)",
        "task_head": "training-only task classifier, logits unchanged"}, "not_exportable": {
        "segment_embedding": "a different vector per segment (rows differ by up to 1): it depends on whether a token "
                             "is instruction, input or response, which a plain model is not told",
        "inst_tokens": "[INST]/[/INST] are never generated by the dataforge model; a plain LM head scores them "
                       "(generation_config.suppress_tokens is written, which transformers' generate honours)"}}
    with torch.no_grad():
        model.segment_emb.table.weight[:] = 0.0
    assert plan_fold(model).dropped["segment_embedding"] == "all rows zero (untrained): no effect"
    with torch.no_grad():
        model.segment_emb.table.weight[:] = 0.25
    assert plan_fold(model).folded["segment_embedding"] == ("one vector for every segment: added to every token "
                                                            "embedding row")
    model2, _ = _trained_like(TrainConfig(attention_bias=True, fusion=True, reasoning_head=True), scale=0.0)
    assert plan_fold(model2).dropped == {"attention_bias": "all biases zero: no effect",
                                         "fusion": "fusion and injection weights zero: no effect",
                                         "reasoning_head": "output projection zero: identity"}
    with torch.no_grad():
        model2.attn_bias.bias[0, 0] = 1.0
    assert plan_fold(model2).not_exportable["attention_bias"] == ("biases attention towards instruction tokens, "
                                                                  "which a plain model cannot tell apart")
