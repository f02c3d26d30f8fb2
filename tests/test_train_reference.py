"""Reference tests of the trainer's maths: every architecture modification and every loss term against a
small hand-written reference (explicit attention scores and masks, explicit formulas, explicit targets).

The reference forward re-runs a tiny Llama layer by layer (HF eager attention, which adds a given 4-D float
mask to q.k*scaling), with masks, biases, injections and heads built here from the formulas in the docs,
not from dataforge's code. Module weights are moved off their zero init first, so a modification applied
in the wrong place, with the wrong sign or scale, on the wrong tokens, or not at all, shows.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from dataforge.records import Record  # noqa: E402
from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import (IGNORE, SEG_INSTRUCTION, PromptFormatter, TaskInfo, collate,  # noqa: E402
                                  encode_records)
from dataforge.train.losses import Anchor, Objective, StepNorm, estimate_fisher  # noqa: E402
from dataforge.train.model import InstructModel, add_inst_tokens  # noqa: E402
from dataforge.train.tiny import tiny_model, tiny_tokenizer, toy_records  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")]

TASKS = ["classification", "generation", "math"]
CFG = TrainConfig()
MIN = torch.finfo(torch.float32).min


def _records() -> list[Record]:
    # three task kinds plus one record without a task (no task target, no temperature target)
    return toy_records(5) + [Record(instruction="Translate the word into French.", input="sea", output="mer")]


def _setup(attn: str = "eager", inst_tokens: bool = False, **mods):
    tok = tiny_tokenizer(chat_template=True)
    prompt_only = add_inst_tokens(tok) if inst_tokens else []
    cfg = TrainConfig(inst_tokens=inst_tokens, **mods)
    base = tiny_model("llama", len(tok), attn=attn)
    ref = tiny_model("llama", len(tok), attn="eager")            # same seed: same weights, eager attention
    tasks = TaskInfo(TASKS, cfg.task_kinds, cfg.temperature_by_kind)
    exs = encode_records(_records(), PromptFormatter(tok, "auto", inst_tokens, 256), tasks, {})
    model = InstructModel(base, cfg.mods_dict(), len(TASKS), prompt_only)
    torch.manual_seed(1)
    with torch.no_grad():                     # off the zero init, so every module does something
        for name, p in model.named_parameters():
            if not name.startswith("base."):
                p.add_(0.3 * torch.randn_like(p))
    batch = collate([exs[:3], exs[3:]], tok.pad_token_id)       # packed: 2 rows, 6 samples
    return tok, cfg, model, ref, exs, batch


# ---------------------------------------------------------------------------------------- reference


def _block_causal(sidx: torch.Tensor) -> torch.Tensor:
    """(B,1,T,T) float mask: 0 where query i may see key j (same sample, j <= i), MIN elsewhere."""
    T = sidx.shape[1]
    i = torch.arange(T)
    ok = (sidx[:, :, None] == sidx[:, None, :]) & (sidx[:, None, :] >= 0) & (i[:, None] >= i[None, :])
    ok = ok | torch.eye(T, dtype=torch.bool)
    return torch.where(ok, 0.0, MIN)[:, None]


def _reference(model: InstructModel, ref, batch) -> dict[str, torch.Tensor]:
    """What the docs say the modified model computes, written out: embeddings (+ segment vector) (+ W_f e
    after the instruction), each layer with its mask (+ b[l,h] + c[l,h]*complexity on instruction keys)
    (+ sigmoid(G_l e + g_l) * U_l e after the instruction), final norm, (+ reasoning head), LM head."""
    ids, seg, sidx, pos = batch["input_ids"], batch["segment_ids"], batch["sample_idx"], batch["position_ids"]
    n = batch["task_ids"].numel()
    inst = (seg == SEG_INSTRUCTION) & (sidx >= 0)
    after = batch["after_inst"].float()[..., None]
    m = ref.model
    x = m.embed_tokens(ids)
    tok_emb = x
    if model.segment_emb is not None:
        x = x + model.segment_emb.table.weight[seg]
    e = None
    if model.encoder is not None:
        e = _reference_encoder(model.encoder, tok_emb, pos, inst, sidx, n)
        fu = model.fusion
        x = x + (e @ fu.fuse.weight.T + fu.fuse.bias)[sidx.clamp(min=0)] * after
        L, D = fu.n_layers, fu.d_model
        inject = torch.sigmoid(e @ fu.gate.weight.T + fu.gate.bias).view(n, L, D) * (e @ fu.inject.weight.T).view(n, L, D)
    base_mask = _block_causal(sidx)
    pe = m.rotary_emb(x, pos)
    h = x
    for layer_no, layer in enumerate(m.layers):
        mask = base_mask
        if model.attn_bias is not None:
            ab = model.attn_bias
            key_is_inst = inst.float()[:, None, None, :]                               # (B,1,1,T)
            bias = ab.bias[layer_no][None, :, None, None] * key_is_inst                 # (B,H,1,T)
            if ab.by_complexity is not None:
                key_cx = batch["complexity"][sidx.clamp(min=0)][:, None, None, :]
                bias = bias + ab.by_complexity[layer_no][None, :, None, None] * key_cx * key_is_inst
            mask = mask + bias
        h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        if e is not None:
            h = h + inject[:, layer_no][sidx.clamp(min=0)] * after
    h = m.norm(h)
    pooled = torch.stack([h[sidx == k][inst[sidx == k]].mean(0) for k in range(n)])
    out = {"pooled": pooled}
    if model.reasoning is not None:
        r = model.reasoning
        h = h + F.gelu(h @ r.up.weight.T + r.up.bias) @ r.back.weight.T + r.back.bias
    out["logits"] = h @ ref.lm_head.weight.T
    if model.temp_head is not None:
        mlp = model.temp_head.mlp
        out["temperature"] = F.softplus(F.gelu(pooled @ mlp[0].weight.T + mlp[0].bias) @ mlp[2].weight.T
                                        + mlp[2].bias).squeeze(-1) + 0.05
    if model.task_head is not None:
        out["task_logits"] = pooled @ model.task_head.weight.T + model.task_head.bias
    if e is not None:
        out["inst_enc"] = e @ model.repr_proj.weight.T + model.repr_proj.bias
    return out


def _reference_encoder(enc, tok_emb, pos, inst, sidx, n) -> torch.Tensor:
    """Each sample's instruction tokens encoded alone (nothing else in the sequence), then mean-pooled."""
    out = []
    for k in range(n):
        sel = (sidx == k) & inst
        x = tok_emb[sel][None] @ enc.proj.weight.T + enc.proj.bias + enc.pos.weight[pos[sel]][None]
        for layer in enc.layers:
            x = _reference_encoder_layer(layer, x)
        out.append(F.layer_norm(x, x.shape[-1:], enc.norm.weight, enc.norm.bias)[0].mean(0))
    return torch.stack(out)


def _reference_encoder_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm multi-head self-attention (all tokens see each other) + GELU MLP, with explicit scores."""
    B, T, D = x.shape
    H = layer.heads
    y = F.layer_norm(x, (D,), layer.ln1.weight, layer.ln1.bias) @ layer.qkv.weight.T + layer.qkv.bias
    q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in y.split(D, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    x = x + a @ layer.out.weight.T + layer.out.bias
    mlp = layer.mlp
    y = F.layer_norm(x, (D,), layer.ln2.weight, layer.ln2.bias)
    return x + F.gelu(y @ mlp[0].weight.T + mlp[0].bias) @ mlp[2].weight.T + mlp[2].bias


def _close(ours, theirs, real=None, atol=2e-5):
    if real is not None:
        ours, theirs = ours[real], theirs[real]
    assert ours.shape == theirs.shape
    err = float((ours - theirs).detach().abs().max())
    assert err < atol, err


CASES = {
    "segment": dict(segment_embedding=True),
    "bias-eager": dict(attention_bias=True),
    "bias-sdpa-kernel": dict(attention_bias=True, attn="sdpa"),
    "bias-complexity-eager": dict(attention_bias=True, attention_bias_complexity=True),
    "bias-complexity-sdpa-kernel": dict(attention_bias=True, attention_bias_complexity=True, attn="sdpa"),
    "fusion": dict(fusion=True, fusion_dim=16, fusion_heads=2),
    "reasoning": dict(reasoning_head=True),
    "heads": dict(temperature_head=True, task_cls_weight=1.0),
    "all-sdpa": dict(segment_embedding=True, attention_bias=True, attention_bias_complexity=True, fusion=True,
                     fusion_dim=16, fusion_heads=2, reasoning_head=True, temperature_head=True,
                     task_cls_weight=1.0, attn="sdpa"),
}


@pytest.mark.parametrize("case", CASES)
def test_modified_forward_equals_the_written_out_reference(case):
    mods = dict(CASES[case])
    tok, cfg, model, ref, exs, batch = _setup(attn=mods.pop("attn", "eager"), **mods)
    ours = model(batch)
    theirs = _reference(model, ref, batch)
    real = batch["sample_idx"] >= 0
    _close(ours["logits"], theirs["logits"], real)
    _close(ours["pooled"], theirs["pooled"])
    for key in ("temperature", "task_logits", "inst_enc"):
        assert (key in ours) == (key in theirs), key
        if key in ours:
            _close(ours[key], theirs[key])
    plain = ref(input_ids=batch["input_ids"][:1, :len(exs[0])]).logits[0]
    changed = not torch.allclose(ours["logits"][0, :len(exs[0])], plain, atol=1e-3)
    assert changed == (case != "heads")     # each modification acts on the logits; the heads never do


def test_biased_attention_kernel_gives_the_explicit_scores():
    """The sdpa route adds the bias as one extra q/k dimension: softmax(q.k*s + mask + bias_h*is_inst(key))."""
    from dataforge.train.attention import _biased_attention
    from dataforge.train.model import attention_module, decoder_layers

    tok, cfg, model, ref, exs, batch = _setup(attn="sdpa", attention_bias=True, attention_bias_complexity=True)
    model(batch)                                           # leaves the per-batch state the kernel reads
    attn = attention_module(decoder_layers(model.base)[1])
    B, T = batch["input_ids"].shape
    H, D = 4, 8
    torch.manual_seed(3)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    k, v = k[:, :2].repeat_interleave(2, 1), v[:, :2].repeat_interleave(2, 1)     # grouped-query heads
    allowed = _block_causal(batch["sample_idx"]) == 0
    mask = model._ctx["masks"][None]                       # the kernel only acts on the model's own masks
    assert torch.equal(mask, allowed)
    out, _ = _biased_attention(attn, q, k[:, ::2], v[:, ::2], mask, scaling=0.3, dropout=0.0)
    inst = (batch["segment_ids"] == SEG_INSTRUCTION).float()
    cx = batch["complexity"][batch["sample_idx"].clamp(min=0)]
    ab = model.attn_bias
    # the query's sample complexity: packed samples never see each other, so it is the key's too
    bias = (ab.bias[1][None, :, None, None] + ab.by_complexity[1][None, :, None, None] * cx[:, None, :, None]) \
        * inst[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)) * 0.3 + bias
    scores = scores.masked_fill(~allowed, float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2)
    real = batch["sample_idx"] >= 0
    _close(out, expected, real)


def test_attention_bias_changes_nothing_before_the_first_instruction_token():
    """Queries that cannot see an instruction token are untouched; queries that can are changed."""
    tok, cfg, model, ref, exs, batch = _setup(attn="sdpa", attention_bias=True)
    logits = model(batch)["logits"][0]
    plain = ref(input_ids=batch["input_ids"][:1, :len(exs[0])]).logits[0]
    first_inst = batch["segment_ids"][0].tolist().index(SEG_INSTRUCTION)
    _close(logits[:first_inst], plain[:first_inst], atol=1e-5)
    assert (logits[first_inst + 1: len(exs[0])] - plain[first_inst + 1:]).abs().amax(-1).min() > 1e-4


def test_no_instruction_token_sees_the_fused_vector():
    """Fusion changes the logits of every token after the sample's instruction and of none before."""
    tok, cfg, model, ref, exs, batch = _setup(fusion=True, fusion_dim=16, fusion_heads=2)
    logits = model(batch)["logits"]
    for row, samples in ((0, exs[:3]), (1, exs[3:])):
        at = 0
        for ex in samples:
            span = slice(at, at + len(ex))
            plain = ref(input_ids=torch.tensor([ex.input_ids])).logits[0]
            after = batch["after_inst"][row, span]
            last_inst = max(i for i, s in enumerate(ex.segments) if s == SEG_INSTRUCTION)
            assert not bool(after[: last_inst + 1].any()) and bool(after[last_inst + 1:].all())
            _close(logits[row, span][~after], plain[~after], atol=1e-5)                    # nowhere else
            assert (logits[row, span][after] - plain[after]).abs().amax(-1).min() > 1e-4     # everywhere after
            at += len(ex)


def test_instruction_encoder_reads_only_its_own_instruction_tokens():
    tok, cfg, model, ref, exs, batch = _setup(fusion=True, fusion_dim=16, fusion_heads=2)
    inst = batch["segment_ids"] == SEG_INSTRUCTION
    emb = model.base.get_input_embeddings()(batch["input_ids"])
    e = model.encoder(emb, batch["position_ids"], inst, batch["sample_idx"], 6)
    # change every token that is not an instruction token: the encoding must not move
    noise = torch.where(inst[..., None], 0.0, torch.randn_like(emb))
    e2 = model.encoder(emb + noise, batch["position_ids"], inst, batch["sample_idx"], 6)
    _close(e, e2, atol=1e-6)
    _close(e, _reference_encoder(model.encoder, emb, batch["position_ids"], inst & (batch["sample_idx"] >= 0),
                                 batch["sample_idx"], 6), atol=1e-5)


def test_prompt_only_tokens_are_never_predicted_nor_targets():
    tok, cfg, model, ref, exs, batch = _setup(inst_tokens=True)
    vocab = len(tok)
    out = model(batch)["logits"]
    assert out.shape[-1] == vocab - 2                         # [INST], [/INST] rows left out of the head
    full = InstructModel(model.base, {})(batch)["logits"]    # the same forward, no prompt-only tokens
    _close(out, full[..., : vocab - 2], atol=1e-6)
    labels = model.lm_labels(batch["lm_labels"])
    inst_ids = set(model.prompt_only_ids)
    had = [(b, t) for b, t in (batch["lm_labels"] != IGNORE).nonzero().tolist()
           if int(batch["lm_labels"][b, t]) in inst_ids]
    assert had and all(int(labels[b, t]) == IGNORE for b, t in had)
    others = (batch["lm_labels"] != IGNORE) & ~torch.isin(batch["lm_labels"], torch.tensor(sorted(inst_ids)))
    assert torch.equal(labels[others], batch["lm_labels"][others])


# ---------------------------------------------------------------------------------------- loss terms


def _token_ce(logits, labels):
    """Per-position next-token CE (B,T-1), 0 where there is no target."""
    lg, tgt = logits[:, :-1], labels[:, 1:]
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.clamp(min=0).reshape(-1), reduction="none")
    return ce.view(tgt.shape) * (tgt != IGNORE)


def test_dual_loss_weights_and_targets():
    tok, _, model, ref, exs, batch = _setup()
    cfg = TrainConfig(lm_weight=0.3, instruction_weight=0.7)
    parts = Objective(model, cfg, len(TASKS))(batch)
    logits = model(batch)["logits"]
    lm = _token_ce(logits, batch["lm_labels"])
    resp = _token_ce(logits, batch["resp_labels"])
    n_lm, n_resp = int((batch["lm_labels"][:, 1:] != IGNORE).sum()), int((batch["resp_labels"][:, 1:] != IGNORE).sum())
    assert n_resp < n_lm
    assert abs(float(parts["lm"]) - float(lm.sum()) / n_lm) < 1e-5
    assert abs(float(parts["instruction"]) - float(resp.sum()) / n_resp) < 1e-5
    assert abs(float(parts["loss"]) - (0.3 * float(lm.sum()) / n_lm + 0.7 * float(resp.sum()) / n_resp)) < 1e-5


def test_uncertainty_weighting_formula_and_task_of_each_token():
    tok, _, model, ref, exs, batch = _setup()
    cfg = TrainConfig(task_weighting="uncertainty", lm_weight=0.0)
    obj = Objective(model, cfg, len(TASKS))
    raw = torch.tensor([0.8, -1.2, 0.4, 2.0])                 # slots: 3 tasks + "no task"
    with torch.no_grad():
        obj.weighting.raw_log_var.copy_(raw)
    parts = obj(batch)
    resp = _token_ce(model(batch)["logits"], batch["resp_labels"])
    has = batch["resp_labels"][:, 1:] != IGNORE
    # the task of a target token is its own sample's task (targets are shifted by one)
    task_of = batch["task_ids"][batch["sample_idx"][:, 1:].clamp(min=0)]
    s = 3 * torch.tanh(raw / 3)
    terms = []
    for slot, task in enumerate([0, 1, 2, IGNORE]):
        sel = has & (task_of == task)
        assert sel.any()
        mean_k = resp[sel].sum() / sel.sum()
        terms.append(0.5 * torch.exp(-s[slot]) * mean_k + 0.5 * s[slot])
    expected = torch.stack(terms).mean()
    assert abs(float(parts["instruction_weighted"]) - float(expected)) < 1e-5
    assert abs(float(parts["loss"]) - float(expected)) < 1e-5


def test_inverse_frequency_weighting_formula():
    tok, _, model, ref, exs, batch = _setup()
    counts = [3, 1, 1, 1]                                     # training-set samples per slot
    obj = Objective(model, TrainConfig(task_weighting="inverse_frequency", lm_weight=0.0), len(TASKS), counts)
    parts = obj(batch)
    resp = _token_ce(model(batch)["logits"], batch["resp_labels"])
    has = batch["resp_labels"][:, 1:] != IGNORE
    task_of = batch["task_ids"][batch["sample_idx"][:, 1:].clamp(min=0)]
    w_of = {0: 6 / (4 * 3), 1: 6 / 4, 2: 6 / 4, IGNORE: 6 / 4}   # N / (K * n_k)
    w = torch.zeros_like(resp)
    for task, wk in w_of.items():
        w[has & (task_of == task)] = wk
    assert abs(float(parts["instruction_weighted"]) - float((w * resp).sum() / w.sum())) < 1e-5


def test_task_classification_targets_and_loss():
    tok, _, model, ref, exs, batch = _setup(task_cls_weight=0.5)
    # targets: the index of the record's task in the run's task list; no task -> no target
    assert batch["task_ids"].tolist() == [0, 1, 2, 0, 1, IGNORE]
    assert [r.task for r in _records()] == ["classification", "generation", "math", "classification",
                                            "generation", None]
    parts = Objective(model, TrainConfig(task_cls_weight=0.5), len(TASKS))(batch)
    tl = model(batch)["task_logits"]
    logp = tl.log_softmax(-1)
    expected = -(logp[0, 0] + logp[1, 1] + logp[2, 2] + logp[3, 0] + logp[4, 1]) / 5
    assert abs(float(parts["task_cls"]) - float(expected)) < 1e-5
    base_loss = float(parts["lm"]) + float(parts["instruction"])
    assert abs(float(parts["loss"]) - (base_loss + 0.5 * float(expected))) < 1e-5


def test_temperature_targets_and_loss():
    tok, _, model, ref, exs, batch = _setup(temperature_head=True)
    # classification -> factual 0.2, generation -> creative 1.0, math -> reasoning 0.6, no task -> none
    tgt = batch["temp_target"].tolist()
    assert tgt[:5] == pytest.approx([0.2, 1.0, 0.6, 0.2, 1.0]) and math.isnan(tgt[5])
    parts = Objective(model, TrainConfig(temperature_head=True, temperature_weight=0.25), len(TASKS))(batch)
    t = model(batch)["temperature"]
    expected = sum((float(t[i]) - v) ** 2 for i, v in enumerate([0.2, 1.0, 0.6, 0.2, 1.0])) / 5
    assert abs(float(parts["temperature"]) - expected) < 1e-5
    base_loss = float(parts["lm"]) + float(parts["instruction"])
    assert abs(float(parts["loss"]) - (base_loss + 0.25 * expected)) < 1e-5


def test_temperature_head_starts_at_its_initial_temperature():
    from dataforge.train.modules import TemperatureHead

    head = TemperatureHead(16, init_temperature=0.9)
    assert torch.allclose(head(torch.randn(5, 16)), torch.full((5,), 0.9), atol=1e-6)


def test_instruction_representation_loss():
    tok, _, model, ref, exs, batch = _setup(fusion=True, fusion_dim=16, fusion_heads=2)
    cfg = TrainConfig(fusion=True, inst_repr_weight=0.4)
    parts = Objective(model, cfg, len(TASKS))(batch)
    out = model(batch)
    expected = float(((out["inst_enc"] - out["pooled"]) ** 2).mean())
    assert abs(float(parts["inst_repr"]) - expected) < 1e-6
    assert abs(float(parts["loss"]) - (float(parts["lm"]) + float(parts["instruction"]) + 0.4 * expected)) < 1e-5


def test_fisher_is_the_mean_normalised_squared_gradient():
    tok, _, model, ref, exs, batch = _setup()
    batches = [collate([[e]], tok.pad_token_id) for e in exs[:3]]
    fisher = estimate_fisher(model, batches)
    sq = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    for b in batches:                                     # the HF model's own loss on each sample
        ref.zero_grad()
        ref(input_ids=b["input_ids"], labels=b["lm_labels"]).loss.backward()
        for n, p in ref.named_parameters():
            sq[n] += p.grad ** 2
    scale = sum(v.numel() for v in sq.values()) / sum(float(v.sum()) for v in sq.values())
    for n, v in sq.items():
        assert torch.allclose(fisher[n], v * scale, rtol=1e-3, atol=1e-6), n


def test_ewc_and_l2sp_penalties_are_the_written_formulas():
    tok, _, model, ref, exs, batch = _setup()
    names = [n for n, _ in model.base.named_parameters()]
    torch.manual_seed(5)
    fisher = {n: torch.rand_like(p) for n, p in model.base.named_parameters()}
    anchor = Anchor(model, fisher, ewc_weight=0.7, l2sp_weight=0.2)
    moved = names[3]
    delta = 0.05 * torch.randn_like(dict(model.base.named_parameters())[moved])
    with torch.no_grad():
        dict(model.base.named_parameters())[moved].add_(delta)
    expected = 0.5 * 0.7 * float((fisher[moved] * delta ** 2).sum()) + 0.5 * 0.2 * float((delta ** 2).sum())
    assert abs(float(anchor.penalty(model)) - expected) < 1e-6 * max(1, expected)
    cfg = TrainConfig(ewc_weight=0.7, l2sp_weight=0.2)
    parts = Objective(model, cfg, len(TASKS), anchor=anchor)(batch)
    assert abs(float(parts["forgetting"]) - expected) < 1e-6 * max(1, expected)
    assert abs(float(parts["loss"]) - (float(parts["lm"]) + float(parts["instruction"]) + expected)) < 1e-5


def test_ewc_anchors_only_the_original_rows_of_resized_embeddings():
    tok, _, model, ref, exs, batch = _setup()
    emb_name = next(n for n, p in model.base.named_parameters() if p.shape[0] == len(tok))
    anchor = Anchor(model, None, ewc_weight=0.0, l2sp_weight=1.0)
    model.base.resize_token_embeddings(len(tok) + 2)
    with torch.no_grad():
        dict(model.base.named_parameters())[emb_name][-2:].add_(5.0)           # new rows: free
    assert float(anchor.penalty(model)) == 0.0
    with torch.no_grad():
        dict(model.base.named_parameters())[emb_name][0, 0] += 0.5               # an original row: anchored
    assert abs(float(anchor.penalty(model)) - 0.5 * 0.25) < 1e-6


# ---------------------------------------------------------------------------------------- accumulation


def test_micro_batch_shares_add_up_to_one_big_batch():
    """Every loss term of two micro-batches (with the step's denominators) sums to the term of one batch
    holding both, and so do the gradients: accumulation equals one batch of twice the size."""
    tok, cfg, model, ref, exs, _ = _setup(attn="sdpa", segment_embedding=True, attention_bias=True, fusion=True,
                                          fusion_dim=16, fusion_heads=2, temperature_head=True,
                                          reasoning_head=True, task_cls_weight=0.3)
    cfg = TrainConfig.all_mods(task_cls_weight=0.3, inst_repr_weight=0.2, task_weighting="uncertainty",
                               l2sp_weight=0.1, inst_tokens=False, fusion_dim=16, fusion_heads=2)
    anchor = Anchor(model, None, 0.0, 0.1)
    with torch.no_grad():
        next(model.base.parameters()).add_(0.01)         # a non-zero forgetting penalty
    obj = Objective(model, cfg, len(TASKS), anchor=anchor)
    with torch.no_grad():
        obj.weighting.raw_log_var.copy_(torch.tensor([0.5, -0.5, 1.0, 0.2]))
    micro = [collate([exs[:1], exs[1:2]], tok.pad_token_id), collate([exs[2:6]], tok.pad_token_id)]
    whole = collate([exs[:1], exs[1:2], exs[2:6]], tok.pad_token_id)

    def grads(loss):
        obj.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}

    big = obj(whole)
    g_big = grads(big["loss"])
    norm = StepNorm(sum(obj.counts(b) for b in micro), shares=2)
    parts = [obj(b, norm) for b in micro]
    obj.zero_grad()
    for p in parts:
        p["loss"].backward()
    g_acc = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    for key in big:
        assert abs(float(parts[0][key] + parts[1][key]) - float(big[key])) < 1e-5, key
    # the unnormalised mean of the two micro-batch means is not the big batch's value: the test has teeth
    assert abs(float(obj(micro[0])["lm"] + obj(micro[1])["lm"]) / 2 - float(big["lm"])) > 1e-3
    assert g_big.keys() == g_acc.keys()
    for n in g_big:
        assert torch.allclose(g_big[n], g_acc[n], rtol=1e-4, atol=1e-7), n


# ---------------------------------------------------------------------------------------- edges


def test_terms_of_a_single_sample_batch_and_their_dtype():
    """Denominators of exactly one (one sample, one task target, one temperature target)."""
    tok, _, model, ref, exs, _ = _setup(temperature_head=True, task_cls_weight=1.0, fusion=True, fusion_dim=16,
                                        fusion_heads=2)
    batch = collate([[exs[1]]], tok.pad_token_id)          # generation: task 1, temperature 1.0
    cfg = TrainConfig(temperature_head=True, task_cls_weight=1.0, fusion=True, inst_repr_weight=1.0,
                      task_weighting="uncertainty")
    parts = Objective(model, cfg, len(TASKS))(batch)
    out = model(batch)
    assert abs(float(parts["task_cls"]) + float(out["task_logits"].log_softmax(-1)[0, 1])) < 1e-6
    assert abs(float(parts["temperature"]) - (float(out["temperature"][0]) - 1.0) ** 2) < 1e-6
    assert abs(float(parts["inst_repr"]) - float(((out["inst_enc"] - out["pooled"]) ** 2).mean())) < 1e-6
    assert len(parts) == 7 and all(v.dtype == torch.float32 for v in parts.values())


def test_token_loss_helpers():
    from dataforge.train.losses import masked_share, mean_token_ce, shifted_token_ce

    tok = torch.tensor([[2.0, 3.0, 5.0]])
    one = masked_share(tok, torch.tensor([[False, True, False]]), torch.tensor(1.0, dtype=torch.float64))
    assert float(one) == 3.0 and one.dtype == torch.float32
    logits = torch.randn(1, 4, 7, requires_grad=True)
    none = mean_token_ce(logits, torch.full((1, 4), IGNORE))
    assert float(none) == 0.0 and none.requires_grad                   # no targets: 0, still differentiable
    only_first = torch.tensor([[IGNORE, 3, IGNORE, IGNORE]])               # one target, at position 1
    assert abs(float(mean_token_ce(logits, only_first)) + float(logits[0, 0].log_softmax(-1)[3])) < 1e-6
    loss, has = shifted_token_ce(logits, torch.tensor([[IGNORE, 3, IGNORE, 6]]))
    assert has.tolist() == [[True, False, True]]
    assert abs(float(loss[0, 2]) + float(logits[0, 2].log_softmax(-1)[6])) < 1e-6 and float(loss[0, 1]) == 0.0


def test_task_weighting_edges():
    from dataforge.train.losses import TaskWeighting

    w = TaskWeighting("uncertainty", 3)
    with torch.no_grad():
        w.raw_log_var.copy_(torch.tensor([0.6, -0.9, 0.3, 1.2]))
    s = 3 * torch.tanh(w.raw_log_var / 3)
    # task 0 has one token, task 1 two, task 2 and "no task" none: only the tasks present are averaged
    out = w(torch.tensor([2.0, 1.0, 3.0]), torch.tensor([0, 1, 1]))
    expected = ((0.5 * torch.exp(-s[0]) * 2.0 + 0.5 * s[0]) + (0.5 * torch.exp(-s[1]) * 2.0 + 0.5 * s[1])) / 2
    assert abs(float(out) - float(expected)) < 1e-6
    single = w(torch.tensor([4.0]), torch.tensor([-100]))                     # one task present, one token
    assert abs(float(single) - float(0.5 * torch.exp(-s[3]) * 4.0 + 0.5 * s[3])) < 1e-6
    inv = TaskWeighting("inverse_frequency", 2, counts=[9, 1, 0])             # weights 10/18, 5, 0
    assert inv.inv_freq.tolist() == pytest.approx([10 / 18, 5.0, 0.0])
    assert abs(float(inv(torch.tensor([3.0]), torch.tensor([0]))) - 3.0) < 1e-6    # sum of weights < 1
    mixed = inv(torch.tensor([3.0, 1.0, 7.0]), torch.tensor([0, 1, -100]))        # the unseen slot weighs 0
    assert abs(float(mixed) - (10 / 18 * 3.0 + 5.0 * 1.0) / (10 / 18 + 5.0)) < 1e-6
    plain = TaskWeighting("inverse_frequency", 2)                                  # no counts: a plain mean
    assert abs(float(plain(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0, 0, 1]))) - 3.0) < 1e-6


def test_loss_state_is_not_saved_in_checkpoints():
    """Reference weights, Fisher and inverse frequencies are rebuilt at start-up: never checkpoint tensors."""
    tok, _, model, ref, exs, batch = _setup()
    fisher = {n: torch.ones_like(p) for n, p in model.base.named_parameters()}
    obj = Objective(model, TrainConfig(task_weighting="inverse_frequency"), len(TASKS), [1, 1, 1, 1],
                    Anchor(model, fisher, 1.0, 1.0))
    keys = set(obj.state_dict())
    assert not any(k.startswith("anchor.") or "inv_freq" in k for k in keys)
    assert keys == {"model." + k for k in model.state_dict()}


def test_anchor_keeps_a_fisher_only_for_ewc():
    tok, _, model, ref, exs, batch = _setup()
    fisher = {n: torch.ones_like(p) for n, p in model.base.named_parameters()}
    l2sp_only = Anchor(model, fisher, ewc_weight=0.0, l2sp_weight=1.0)
    assert not any(n.startswith("fisher_") for n, _ in l2sp_only.named_buffers())
    with pytest.raises(ValueError) as err:
        Anchor(model, None, ewc_weight=1.0, l2sp_weight=0.0)
    assert str(err.value) == "EWC needs the Fisher of the base model (estimate_fisher)"
    from dataforge.train.losses import TaskWeighting
    assert TaskWeighting("inverse_frequency", 2).inv_freq.tolist() == [1.0, 1.0, 1.0]   # no counts: weight 1 each


def test_frozen_weights_are_not_anchored():
    tok, _, model, ref, exs, batch = _setup()
    params = list(model.base.named_parameters())
    params[0][1].requires_grad_(False)                              # e.g. frozen embeddings (LoRA freezes most)
    anchor = Anchor(model, None, 0.0, 1.0)
    assert anchor.names == [n for n, _ in params[1:]]
    with torch.no_grad():
        params[0][1].add_(1.0)
        params[-1][1].add_(0.1)
    assert abs(float(anchor.penalty(model)) - 0.5 * 0.01 * params[-1][1].numel()) < 1e-4


def test_optional_terms_follow_their_weights():
    """A head or an encoder present with its loss weight at 0 adds no term; a weight without a head (no
    task in the data) adds none either."""
    tok, _, model, ref, exs, batch = _setup(task_cls_weight=1.0, fusion=True, fusion_dim=16, fusion_heads=2)
    parts = Objective(model, TrainConfig(task_cls_weight=0.0, fusion=True, inst_repr_weight=0.0), len(TASKS))(batch)
    assert "task_cls" not in parts and "inst_repr" not in parts
    plain = InstructModel(tiny_model("llama", len(tok)), TrainConfig(task_cls_weight=1.0).mods_dict(), 0)
    assert plain.task_head is None
    assert "task_cls" not in Objective(plain, TrainConfig(task_cls_weight=1.0), 0)(batch)


def test_fisher_edges():
    tok, _, model, ref, exs, batch = _setup()
    batches = [collate([[e]], tok.pad_token_id) for e in exs[:2]]
    with torch.no_grad():
        model.base.model.norm.weight.mul_(1e-3)                      # tiny gradients: their sum is below 1
    fisher = estimate_fisher(model, batches)
    raw_total = 0.0
    for b in batches:
        model.zero_grad()
        F.cross_entropy(model(b)["logits"][0, :-1], b["lm_labels"][0, 1:]).backward()
        raw_total += sum(float((p.grad ** 2).sum()) for p in model.base.parameters() if p.grad is not None)
    assert 0 < raw_total < 1
    assert abs(sum(float(f.sum()) for f in fisher.values()) / sum(f.numel() for f in fisher.values()) - 1) < 1e-4
    empty = {k: v.clone() for k, v in batches[0].items()}
    empty["lm_labels"] = torch.full_like(empty["lm_labels"], IGNORE)  # no targets: no gradient
    zero = estimate_fisher(model, [empty])
    assert all(bool((f == 0).all()) for f in zero.values())
    assert all(p.grad is None for p in model.parameters())           # leaves no gradient behind
    bf16 = InstructModel(tiny_model("llama", len(tok)).to(torch.bfloat16), {})
    assert all(f.dtype == torch.float32 for f in estimate_fisher(bf16, batches[:1]).values())


def test_module_shapes_and_defaults():
    """What the reference forward takes from the modules themselves: their layer counts and widths."""
    from dataforge.train.modules import InstructionEncoder, ReasoningHead, TemperatureHead, TwoStreamFusion

    enc = InstructionEncoder(32, 16, layers=3, heads=2)
    assert len(enc.layers) == 3 and enc.pos.num_embeddings == 2048 and enc.proj.out_features == 16
    assert enc.layers[0].mlp[0].out_features == 64 and enc.layers[0].heads == 2
    with pytest.raises(ValueError) as err:
        InstructionEncoder(32, 12, layers=1, heads=5)
    assert str(err.value) == "fusion_dim 12 must be divisible by fusion_heads 5"
    assert ReasoningHead(64, 4).width == 16 and ReasoningHead(64, 4).up.out_features == 64
    assert ReasoningHead(32, 8).width == 8                            # at least 8 wide per path
    assert torch.allclose(TemperatureHead(16)(torch.randn(3, 16)), torch.full((3,), 0.7), atol=1e-6)
    head = TemperatureHead(16)
    with torch.no_grad():
        head.mlp[2].bias.fill_(-50.0)
    assert torch.allclose(head(torch.randn(3, 16)), torch.full((3,), 0.05), atol=1e-6)   # floor
    fusion = TwoStreamFusion(16, 32, 3)
    assert fusion.inject.bias is None and fusion.gate.out_features == 96


def test_instruction_encoder_clamps_far_positions():
    from dataforge.train.modules import InstructionEncoder

    torch.manual_seed(0)
    enc = InstructionEncoder(8, 8, layers=1, heads=2, max_positions=4)
    emb = torch.randn(1, 6, 8)
    pos = torch.arange(6)[None]
    inst = torch.tensor([[False, True, True, True, True, True]])
    sidx = torch.zeros(1, 6, dtype=torch.long)
    got = enc(emb, pos, inst, sidx, 1)
    x = emb[0, 1:] @ enc.proj.weight.T + enc.proj.bias + enc.pos.weight[torch.tensor([1, 2, 3, 3, 3])]
    x = _reference_encoder_layer(enc.layers[0], x[None])
    expected = F.layer_norm(x, (8,), enc.norm.weight, enc.norm.bias)[0].mean(0)
    assert torch.allclose(got[0], expected, atol=1e-5)


def test_sample_mean_edges():
    from dataforge.train.modules import sample_mean

    x = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    sidx = torch.tensor([[0, 0, 1, 1, 1, -1]])
    sel = torch.tensor([[True, False, False, True, True, True]])
    got = sample_mean(x, sidx, sel, 3)
    assert got.tolist() == [[0.0, 1.0], [7.0, 8.0], [0.0, 0.0]]    # one token; two tokens; none; padding out
