"""Trainer loop on a tiny model: the loss goes down, a resumed run equals an uninterrupted one, and the
`dataforge train` / `dataforge generate` commands work end to end on a model directory."""

from __future__ import annotations

import json
import math
import shutil

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from dataforge.cli import app  # noqa: E402
from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.io import write_records  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402
from train_helpers import run_then_interrupt  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "final.jsonl"
    write_records(path, toy_records(48))
    return path


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_loss_decreases_with_every_modification_on(records_file, tmp_path):
    tok = tiny_tokenizer(chat_template=True)
    cfg = TrainConfig.all_mods(max_steps=12, batch_size=4, lr=1e-2, max_length=128, warmup_ratio=0.1,
                               instruction_mask_prob=0.1, l2sp_weight=1e-4, grad_checkpointing=True,
                               ewc_weight=0.01, ewc_samples=4)
    summary = run_train(records_file, tmp_path / "run", cfg, model=tiny_llama(len(tok)), tokenizer=tok,
                        progress=False)
    log = _log(tmp_path / "run")
    assert [e["step"] for e in log] == list(range(1, 13))
    assert log[-1]["instruction"] < 0.7 * log[0]["instruction"]
    assert log[-1]["lm"] < log[0]["lm"] and all(e["tokens_per_s"] > 0 for e in log)
    assert summary["steps"] == 12 and summary["eval_samples"] == 2 and summary["eval_loss"] < log[0]["instruction"]
    assert summary["plain_hf"] is False
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["model_type"] == "dataforge" and config["base_config"]["model_type"] == "llama"
    assert log[-1]["forgetting"] > 0 and log[0]["forgetting"] == 0     # EWC + L2-SP pull back once weights move


def test_resume_continues_identically(records_file, tmp_path, monkeypatch):
    """A run interrupted after step 3 saves a checkpoint on the way out. Run again from an older checkpoint
    (step 2, as if the last one were lost), it redoes step 3 and ends with the weights and the log of an
    unbroken run. The interrupt is injected by making the LR schedule raise KeyboardInterrupt."""
    from safetensors.torch import load_file

    cfg = TrainConfig(max_steps=6, save_every=2, batch_size=4, lr=3e-3, max_length=128, grad_accum=2,
                      instruction_mask_prob=0.2, segment_embedding=True, task_weighting="uncertainty")
    run_then_interrupt(records_file, tmp_path, cfg, monkeypatch, at=3)
    ckpts = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000003"]
    assert [e["step"] for e in _log(tmp_path / "b")] == [1, 2, 3]
    shutil.rmtree(ckpts / "step-0000003")
    tok_b = tiny_tokenizer()
    summary = run_train(records_file, tmp_path / "b", cfg, model=tiny_llama(len(tok_b), seed=99), tokenizer=tok_b,
                        progress=False)
    assert summary["resumed_from"].endswith("step-0000002") and summary["steps"] == 6
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000006" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000006" / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [e["step"] for e in lb] == list(range(1, 7))
    assert [e["loss"] for e in la] == [e["loss"] for e in lb]


def test_train_and_generate_commands(records_file, tmp_path):
    tok = tiny_tokenizer()
    base_dir = tmp_path / "tiny-llama"
    tiny_llama(len(tok)).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    data = tmp_path / "with_bad_line.jsonl"
    data.write_text(records_file.read_text() + "{not json\n")
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), "--model", str(base_dir),
                              "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2", "--temperature-head",
                              "--max-length", "128", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["steps"] == 3 and summary["records_in"] == 48 and summary["prompt_format"] == "inst"
    assert summary["dropped"] == {"bad_input_line": 1} and (tmp_path / "run" / "input.rejects.jsonl").exists()
    res = runner.invoke(app, ["generate", str(tmp_path / "run"), "Add the two numbers and give the result.",
                              "--input", "2 3", "--max-new-tokens", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["temperature_source"] == "head" and 0.05 < out["temperature"] < 3 and isinstance(out["text"], str)
    bad = runner.invoke(app, ["train", str(records_file), "-o", str(tmp_path / "x"), "--model", str(tmp_path / "nope")])
    assert bad.exit_code != 0


# ---------------------------------------------------------------------------------------- the loop's maths


def _run(records_file, out, tok=None, model=None, **cfg):
    tok = tok or tiny_tokenizer()
    return run_train(records_file, out, TrainConfig(**cfg), model=model or tiny_llama(len(tok)), tokenizer=tok,
                     progress=False)


def test_accumulated_step_equals_one_batch_of_the_whole_step(records_file, tmp_path):
    """2 micro-batches of 2 rows give the gradient of 1 batch of 4 rows (same samples): compared through the
    AdamW first moment after one step (m = 0.1 * g, no clipping), with every loss term on."""
    from safetensors.torch import load_file

    common = dict(max_steps=1, pack=False, group_by_length=False, max_grad_norm=0.0, eval_fraction=0.0,
                  max_length=128, segment_embedding=True, attention_bias=True, fusion=True, fusion_dim=16,
                  temperature_head=True, reasoning_head=True, task_cls_weight=0.3, inst_repr_weight=0.2,
                  task_weighting="uncertainty", l2sp_weight=0.1)
    _run(records_file, tmp_path / "big", batch_size=4, grad_accum=1, **common)
    _run(records_file, tmp_path / "acc", batch_size=2, grad_accum=2, **common)
    a = load_file(str(tmp_path / "big" / "checkpoints" / "step-0000001" / "optimizer.safetensors"))
    b = load_file(str(tmp_path / "acc" / "checkpoints" / "step-0000001" / "optimizer.safetensors"))
    moments = [k for k in a if k.endswith("exp_avg")]
    assert len(moments) > 20 and moments == [k for k in b if k.endswith("exp_avg")]
    for k in moments:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-9), k
    la, lb = _log(tmp_path / "big")[0], _log(tmp_path / "acc")[0]
    for key in ("loss", "lm", "instruction", "instruction_weighted", "temperature", "task_cls", "inst_repr"):
        assert abs(la[key] - lb[key]) < 1e-5, key
    assert la["tokens"] == lb["tokens"]


def test_learning_rate_follows_the_schedule(records_file, tmp_path):
    """Linear warmup to the peak, then cosine decay to 10%, written out; and the optimizer really uses it:
    AdamW's first update is lr * g/(|g|+eps), so the largest weight change is the step's learning rate,
    per parameter group (base weights at --lr, new modules at --mods-lr)."""
    from safetensors.torch import load_file

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _run(records_file, tmp_path / "run", tok, model, max_steps=6, warmup_ratio=0.34, lr=1e-3, mods_lr=4e-2,
         batch_size=2, max_length=128, save_every=1, keep_checkpoints=10, segment_embedding=True)
    c = math.cos
    factors = [1 / 2, 2 / 2, 1.0, 0.1 + 0.45 * (1 + c(math.pi / 4)), 0.1 + 0.45 * (1 + c(math.pi / 2)),
               0.1 + 0.45 * (1 + c(3 * math.pi / 4))]                 # warmup = round(0.34 * 6) = 2 steps
    assert [e["lr"] for e in _log(tmp_path / "run")] == pytest.approx([1e-3 * f for f in factors], rel=1e-9)
    step1 = load_file(str(tmp_path / "run" / "checkpoints" / "step-0000001" / "weights.safetensors"))
    base_change = max(float((step1["model.base." + k] - v).abs().max()) for k, v in before.items())
    assert base_change == pytest.approx(1e-3 * 0.5, rel=1e-3)
    seg = step1["model.segment_emb.table.weight"]                          # zero-initialised module
    assert float(seg.abs().max()) == pytest.approx(4e-2 * 0.5, rel=1e-3)


def test_the_loop_masks_instructions_with_the_dedicated_token(records_file, tmp_path, monkeypatch):
    from dataforge.train.data import MASK_TOKEN, SEG_INSTRUCTION
    from dataforge.train.losses import Objective

    seen = []
    real_forward = Objective.forward

    def spy(self, batch, norm=None, outputs_only=False):
        if not outputs_only:                                  # (eval batches are never masked)
            seen.append({k: v.clone() for k, v in batch.items()})
        return real_forward(self, batch, norm, outputs_only)

    monkeypatch.setattr(Objective, "forward", spy)
    tok = tiny_tokenizer()
    summary = _run(records_file, tmp_path / "run", tok, max_steps=2, batch_size=4, max_length=128,
                   instruction_mask_prob=0.5)
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
    assert mask_id not in (tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) and mask_id == len(tok) - 1
    meta = json.loads((tmp_path / "run" / "model" / "dataforge.json").read_text())
    assert meta["prompt_only_ids"] == [mask_id] and summary["plain_hf"] is False   # never predicted
    assert len(seen) == 2
    for b in seen:
        masked = b["input_ids"] == mask_id
        inst = b["segment_ids"] == SEG_INSTRUCTION
        assert not bool((masked & ~inst).any())                          # only instruction tokens
        share = float(masked.sum()) / float(inst.sum())
        assert 0.3 < share < 0.7                                          # p = 0.5
        assert bool((b["lm_labels"][masked] == -100).all())               # never a target


def test_precision_choice():
    from dataforge.train.device import choose_precision

    assert choose_precision("auto", "cpu", False) is None
    assert choose_precision("auto", "cuda", True) is torch.bfloat16
    assert choose_precision("auto", "cuda", False) is torch.float16      # + gradient scaler
    assert choose_precision("on", "cpu", False) is torch.bfloat16
    assert choose_precision("off", "cuda", True) is None
    with pytest.raises(DataforgeError) as err:
        choose_precision("on", "cuda", False)
    assert str(err.value) == ("--bf16 on: this GPU has no native bf16; use --bf16 auto (fp16 with a gradient "
                              "scaler) or --bf16 off")
