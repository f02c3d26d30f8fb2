"""LoRA through peft on tiny models: what trains and what stays frozen, the adapter as peft saves and loads
it, --merge, resume, EWC over the adapter, and the refusals (--qlora without CUDA, --merge without --lora).
The real SmolLM2 weights: one slow test."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from typer.testing import CliRunner  # noqa: E402

from dataforge.cli import app  # noqa: E402
from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.io import write_records  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train.data import PromptFormatter, TaskInfo, collate, encode_records  # noqa: E402
from dataforge.train.hf_auto import single_sample_batch  # noqa: E402
from dataforge.train.losses import Anchor, estimate_fisher  # noqa: E402
from dataforge.train.lora import apply_lora, attach, param_counts  # noqa: E402
from dataforge.train.model import InstructModel, add_inst_tokens, load_instruct  # noqa: E402
from dataforge.train.tiny import tiny_gpt2, tiny_llama, tiny_tokenizer, toy_records  # noqa: E402
from train_helpers import run_then_interrupt, tiny_run_inputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    return tiny_run_inputs(tmp_path_factory.mktemp("lora"), 40)


@pytest.fixture(scope="module")
def records_file(tiny_inputs):
    return tiny_inputs[1]


@pytest.fixture(scope="module")
def base_dir(tiny_inputs):
    return tiny_inputs[0]


def _lora_param_count(model, r: int) -> int:
    """r * (in + out) for every linear layer inside the decoder blocks: what LoRA adds (by hand)."""
    from dataforge.train.model import decoder_layers

    return sum(r * (m.in_features + m.out_features) for layer in decoder_layers(model)
               for m in layer.modules() if isinstance(m, torch.nn.Linear))


def _probe(tok, inst_tokens: bool):
    fmt = PromptFormatter(tok, "auto", inst_tokens, 128)
    ids, segs = fmt.encode_prompt("Add the two numbers and give the result.", "2 3")
    return single_sample_batch(torch.tensor([ids]), None, torch.tensor([segs]), 3)


def test_lora_run_trains_adapter_tokens_and_modules_only_and_saves_the_peft_way(records_file, base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    expected_lora = _lora_param_count(model, r=4)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(model=str(base_dir), lora=True, lora_r=4, lora_dropout=0.0, segment_embedding=True,
                      inst_tokens=True, max_steps=3, batch_size=4, max_length=128, lr=5e-2, merge=True)
    s = run_train(records_file, tmp_path / "run", cfg, model=model, tokenizer=tok, progress=False)
    d = model.config.hidden_size
    # trainable: LoRA A/B of every projection + the two new token rows + the segment table (5 x d)
    assert s["params"]["trainable"] == expected_lora + 2 * d + 5 * d
    assert s["adapter"]["targets"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert {k: v for k, v in s["adapter"].items() if k != "targets"} == {"kind": "lora", "r": 4, "alpha": cfg.lora_alpha}
    assert s["merged_dir"] == str(tmp_path / "run" / "merged") and s["plain_hf"] is False
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["merged_dir"] == s["merged_dir"]
    full = run_train(records_file, tmp_path / "full", TrainConfig(max_steps=1, batch_size=4, max_length=128),
                     model=tiny_llama(len(tiny_tokenizer())), tokenizer=tiny_tokenizer(), progress=False)
    assert full["params"]["trainable"] == full["params"]["total"] > 10 * s["params"]["trainable"]
    adapter = tmp_path / "run" / "model"
    assert (adapter / "adapter_config.json").exists() and (adapter / "dataforge_mods.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    # the base stayed frozen: reloaded through peft onto a fresh base, only the adapter differs from it
    fresh = AutoModelForCausalLM.from_pretrained(base_dir)
    fresh.resize_token_embeddings(len(load_instruct(adapter)[1]))
    peft_model = PeftModel.from_pretrained(fresh, adapter)
    base_now = {n.replace("base_model.model.", "").replace(".token_adapter", "").replace(".base_layer", ""): p
                for n, p in peft_model.named_parameters() if "lora_" not in n and "tokens_delta" not in n}
    assert set(base_now) == set(frozen_before)
    for name, before in frozen_before.items():                  # resized matrices: the original rows
        assert torch.equal(base_now[name][: before.shape[0]], before), name
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().max()) > 0 for p in lora_b)        # B starts at zero: it trained
    # dataforge's loader gives the in-memory model's logits (adapter + modules); merged/ gives the same
    imodel, tok2, meta = load_instruct(adapter)
    assert meta["adapter"]["base_model"] == str(base_dir.resolve())
    merged, _, merged_meta = load_instruct(tmp_path / "run" / "merged")
    assert merged_meta["merged_adapter"] is True
    assert json.loads((tmp_path / "run" / "merged" / "config.json").read_text())["model_type"] == "dataforge"
    batch = _probe(tok2, True)
    with torch.no_grad():
        a, b = imodel(batch)["logits"], merged(batch)["logits"]
        assert float(imodel.segment_emb.table.weight.abs().max()) > 0
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_adapter_reloads_with_peft_to_the_in_memory_logits_and_merges(tmp_path):
    """No modifications: the adapter directory is what peft users expect, and merged/ is a plain HF model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    for build in (tiny_llama, tiny_gpt2):
        model = build(len(tok))
        base_copy = build(len(tok))
        cfg = TrainConfig(lora=True, lora_r=4)
        peft_model = apply_lora(model, cfg)
        imodel = InstructModel(model, cfg.mods_dict())
        attach(imodel, peft_model)
        with torch.no_grad():                                  # as if trained: B away from zero
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        from dataforge.train.model_dir import write_model

        write_model(tmp_path / build.__name__, imodel, tok, {}, cfg=cfg)
        batch = _probe(tok, False)
        imodel.eval()
        with torch.no_grad():
            in_memory = imodel(batch)["logits"]
            plain = base_copy(input_ids=batch["input_ids"]).logits        # before peft injects into base_copy
            reloaded = PeftModel.from_pretrained(base_copy, tmp_path / build.__name__).eval()
            via_peft = reloaded(input_ids=batch["input_ids"]).logits
            from dataforge.train.lora import merge_into_base

            merge_into_base(imodel)
            write_model(tmp_path / f"{build.__name__}-merged", imodel, tok, {}, cfg=cfg)
            merged = AutoModelForCausalLM.from_pretrained(tmp_path / f"{build.__name__}-merged").eval()
            via_merged = merged(input_ids=batch["input_ids"]).logits
        assert float((in_memory - via_peft).abs().max()) < 1e-5
        assert float((via_peft - plain).abs().max()) > 1e-2                        # the adapter matters
        assert float((via_merged - via_peft).abs().max()) < 1e-5
        cfg_json = json.loads((tmp_path / f"{build.__name__}-merged" / "config.json").read_text())
        assert cfg_json["model_type"] in ("llama", "gpt2")


def test_resume_with_an_adapter_continues_identically(records_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    cfg = TrainConfig(lora=True, lora_r=4, segment_embedding=True, max_steps=5, save_every=2, batch_size=4,
                      max_length=128, lr=1e-2, neftune_alpha=5.0)
    run_then_interrupt(records_file, tmp_path, cfg, monkeypatch, at=3)
    ckpt = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000003" / "weights.safetensors"))
    assert ckpt and all("lora_" in k or not k.startswith("model.base.") for k in ckpt)   # trainable tensors only
    tok_c = tiny_tokenizer()
    s = run_train(records_file, tmp_path / "b", cfg, model=tiny_llama(len(tok_c)), tokenizer=tok_c, progress=False)
    assert s["resumed_from"].endswith("step-0000003") and s["steps"] == 5
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000005" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000005" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DataforgeError, match="different lora_r"):
        run_train(records_file, tmp_path / "b", cfg.model_copy(update={"lora_r": 8}), model=tiny_llama(len(tok_c)),
                  tokenizer=tiny_tokenizer(), progress=False)


def test_ewc_with_an_adapter_anchors_the_trainable_parameters_only(records_file, tmp_path):
    tok = tiny_tokenizer()
    prompt_only = add_inst_tokens(tok)
    base = tiny_llama(len(tok))
    base.resize_token_embeddings(len(tok))
    cfg = TrainConfig(lora=True, lora_r=4, inst_tokens=True, ewc_weight=1.0)
    apply_lora(base, cfg, prompt_only)
    imodel = InstructModel(base, cfg.mods_dict(), 0, prompt_only)
    exs = encode_records(toy_records(4), PromptFormatter(tok, "auto", True, 128), TaskInfo(), {})
    fisher = estimate_fisher(imodel, (collate([[e]], tok.pad_token_id) for e in exs))
    anchor = Anchor(imodel, fisher, 1.0, 0.0)
    trainable = {n for n, p in imodel.base.named_parameters() if p.requires_grad}
    assert set(anchor.names) == set(fisher) == trainable
    assert all("lora_" in n or "trainable_tokens" in n for n in anchor.names)
    assert float(anchor.penalty(imodel)) == 0.0
    s = run_train(records_file, tmp_path / "ewc", TrainConfig(lora=True, lora_r=4, ewc_weight=1.0, ewc_samples=4,
                                                              max_steps=3, batch_size=4, max_length=128, lr=5e-2),
                  model=tiny_llama(len(tiny_tokenizer())), tokenizer=tiny_tokenizer(), progress=False)
    log = [json.loads(line) for line in (tmp_path / "ewc" / "log.jsonl").read_text().splitlines()]
    assert log[0]["forgetting"] == 0 and log[-1]["forgetting"] > 0 and s["final_loss"]["forgetting"] > 0


def test_refusals(records_file, tmp_path):
    with pytest.raises(DataforgeError, match="needs --lora"):
        TrainConfig(merge=True)
    assert TrainConfig(lora=True).lr == 2e-4 and TrainConfig(lora=True, lr=1e-5).lr == 1e-5
    assert TrainConfig(qlora=True).lora is True
    assert TrainConfig(lora_targets=["q_proj,v_proj"]).lora_targets == ["q_proj", "v_proj"]
    res = CliRunner().invoke(app, ["train", str(records_file), "-o", str(tmp_path / "q"), "--qlora", "--no-progress"])
    if not torch.cuda.is_available():
        assert res.exit_code != 0 and "needs a CUDA GPU" in str(res.exception or res.output)
    with pytest.raises(DataforgeError, match="lora-targets"):
        tok = tiny_tokenizer()
        run_train(records_file, tmp_path / "t", TrainConfig(lora=True, lora_targets=["no_such_proj"], max_steps=1),
                  model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
    assert param_counts(torch.nn.Linear(3, 2)) == {"trainable": 8, "total": 8, "trainable_share": 1.0}


@pytest.mark.slow
def test_lora_on_real_smollm2_weights(tmp_path):
    """A few CPU steps on SmolLM2-135M-Instruct: the adapter reloads with peft to the in-memory logits
    (1e-5), and --merge writes a plain HF checkpoint with those logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dataforge.train.smollm2 import load_smollm2

    data = tmp_path / "seeds.jsonl"
    write_records(data, toy_records(12))
    model, tok = load_smollm2()                    # loaded once (slow on a busy CPU); copies for the reloads
    fresh, base2, tok2 = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(tok)
    cfg = TrainConfig(model="smollm2", lora=True, lora_r=8, max_steps=2, batch_size=2, max_length=96,
                      eval_fraction=0.0, lr=1e-3)
    s = run_train(data, tmp_path / "run", cfg, model=model, tokenizer=tok, progress=False)
    assert s["params"]["trainable"] < 0.05 * s["params"]["total"]
    ids = tok("Write a haiku about the sea.", return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        in_memory = model(input_ids=ids).logits                  # LoRA layers were injected into this object
        via_peft = PeftModel.from_pretrained(fresh, tmp_path / "run" / "model").eval()(input_ids=ids).logits
    assert float((in_memory - via_peft).abs().max()) < 1e-5
    # --merge on the finished run (resumes at its last step, trains nothing, writes merged/)
    s2 = run_train(data, tmp_path / "run", cfg.model_copy(update={"merge": True}), model=base2, tokenizer=tok2,
                   progress=False)
    assert s2["steps"] == 2 and s2["merged_dir"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged").eval()
    with torch.no_grad():
        via_merged = merged(input_ids=ids).logits
    assert float((via_merged - via_peft).abs().max()) < 1e-4
    shutil.rmtree(tmp_path / "run" / "checkpoints")


def test_train_help_renders_with_every_option():
    """Help texts are plain text: '[/INST]' once broke rich's markup parser and `train --help` crashed."""
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for text in ("[INST]/[/INST]", "--lora-r", "--qlora", "--fsdp-checkpoint", "--neftune-alpha", "--report-to",
                 "--early-stop-patience"):
        assert text in res.output
