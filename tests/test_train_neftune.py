"""NEFTune: noise of the paper's scale alpha/sqrt(L*d) per sample at train time, exactly none at eval."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import PromptFormatter, TaskInfo, collate, encode_records  # noqa: E402
from dataforge.train.model import InstructModel  # noqa: E402
from dataforge.train.neftune import neftune_scale, sample_lengths  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scale_is_alpha_over_sqrt_of_own_sample_length_times_width():
    # one packed row: a sample of 3 tokens, one of 5, then 2 padding; a second row: samples of 1 and 4, 5 pad
    sidx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, -1, -1], [2, 3, 3, 3, 3, -1, -1, -1, -1, -1]])
    assert sample_lengths(sidx).tolist() == [[3, 3, 3, 5, 5, 5, 5, 5, 0, 0], [1, 4, 4, 4, 4, 0, 0, 0, 0, 0]]
    assert sample_lengths(torch.full((1, 3), -1)).tolist() == [[0, 0, 0]]            # padding only
    scale = neftune_scale(sidx, d_model=8, alpha=5.0)[..., 0]
    expected = [[5 / math.sqrt(24)] * 3 + [5 / math.sqrt(40)] * 5 + [0.0] * 2,
                [5 / math.sqrt(8)] + [5 / math.sqrt(32)] * 4 + [0.0] * 5]
    assert torch.allclose(scale, torch.tensor(expected, dtype=scale.dtype), atol=1e-12)


def _model_and_batch(alpha: float):
    tok = tiny_tokenizer()
    exs = encode_records(toy_records(4), PromptFormatter(tok, "auto", False, 256), TaskInfo(), {})
    model = InstructModel(tiny_llama(len(tok)), TrainConfig(segment_embedding=True).mods_dict())
    model.neftune_alpha = alpha
    batch = collate([[exs[0], exs[1]], [exs[2]]], tok.pad_token_id)      # packed: two samples in the first row
    seen = []
    model.base.base_model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"].detach()),
                                                    with_kwargs=True)
    return model, batch, seen


def test_noise_at_train_time_is_the_formula_and_none_at_eval():
    alpha = 5.0
    model, batch, seen = _model_and_batch(alpha)
    plain = model.base.get_input_embeddings()(batch["input_ids"]).detach()
    model.eval()
    model(batch)
    assert torch.equal(seen[-1], plain)                          # eval: exactly the embeddings, no noise
    model.train()
    torch.manual_seed(123)
    model(batch)
    torch.manual_seed(123)                                       # the same uniform draws, by hand
    u = torch.empty_like(plain).uniform_(-1.0, 1.0)
    d = plain.shape[-1]
    lengths = sample_lengths(batch["sample_idx"]).double()
    scale = torch.where(lengths > 0, alpha / torch.sqrt(lengths.clamp(min=1) * d), 0.0).unsqueeze(-1)
    expected = plain + u * scale.to(plain.dtype)
    assert torch.allclose(seen[-1], expected, atol=1e-7, rtol=0)
    noise = seen[-1] - plain
    pad = batch["sample_idx"] < 0
    assert pad.any() and float(noise[pad].abs().max()) == 0.0
    for s in batch["sample_idx"].unique().tolist():             # per sample: bounded by, and close to, its scale
        if s < 0:
            continue
        sel = batch["sample_idx"] == s
        bound = alpha / math.sqrt(int(sel.sum()) * d)
        assert bound * 0.9 < float(noise[sel].abs().max()) <= bound * (1 + 1e-6)


def test_trainer_applies_the_configured_alpha(tmp_path):
    from dataforge.io import write_records
    from dataforge.train import run_train

    data = tmp_path / "d.jsonl"
    write_records(data, toy_records(12))
    losses = {}
    for alpha in (0.0, 50.0):
        tok = tiny_tokenizer()
        s = run_train(data, tmp_path / f"a{alpha}", TrainConfig(max_steps=1, batch_size=4, max_length=128,
                                                                neftune_alpha=alpha, eval_fraction=0.25),
                      model=tiny_llama(len(tok)), tokenizer=tok, progress=False)
        losses[alpha] = (s["final_loss"]["loss"], s["eval_loss"])
    assert losses[0.0][0] != losses[50.0][0]                     # training step saw the noise
