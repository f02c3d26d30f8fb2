"""Trainer throughput: dataforge's loop vs TRL's SFTTrainer and a plain Hugging Face loop, same model,
data, batch and max length, in one process.

Prints tokens/s (real tokens, padding excluded) for
  - a plain HF loop (batches in file order, padded, `model(input_ids, attention_mask, labels).loss`),
  - TRL's SFTTrainer with packing (its best strategy: best-fit decreasing, padding-free; on CPU the model
    keeps packed samples apart through their position ids), completion-only loss, on the same token ids,
  - dataforge with modifications off (length-grouped; packed; packed with the response-only loss TRL uses),
  - dataforge with every modification and auxiliary loss on (packed),
the padding fraction with and without packing, and the loss TRL and dataforge compute on TRL's first batch
with the same initial weights (they must agree).
Goals: >= 1.0x TRL and the plain loop with mods off, <= 15% overhead with mods on, padding < 5% when packed.

    python benchmarks/train_throughput.py                 # small Llama-style model built from a config
    python benchmarks/train_throughput.py --hidden 576 --layers 30 --max-length 256 --batch-size 2
                                                          # SmolLM2-135M's shape, random weights
    python benchmarks/train_throughput.py --model smollm2 # SmolLM2-135M itself (slow on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dataforge.io import read_records, write_records  # noqa: E402
from dataforge.train import TrainConfig, run_train  # noqa: E402
from dataforge.train.data import PromptFormatter, TaskInfo, collate, encode_records, padding_fraction, plan_rows  # noqa: E402
from dataforge.train.tiny import tiny_tokenizer, toy_records  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "instruct_corpus_shared.jsonl"


def small_llama(vocab: int, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=3 if heads % 3 == 0 else max(1, heads // 2),
                      max_position_embeddings=1024, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).float()


def plain_hf_loop(model, examples, pad_id: int, batch_size: int, steps: int, lr: float) -> dict:
    """What most people write: batches in order, right padding, the model's own loss on response labels."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    batches = [examples[i: i + batch_size] for i in range(0, len(examples), batch_size)]
    tokens, t0 = 0, time.perf_counter()
    for step in range(steps):
        rows = batches[step % len(batches)]
        b = collate([[e] for e in rows], pad_id)
        mask = (b["sample_idx"] >= 0).long()
        loss = model(input_ids=b["input_ids"], attention_mask=mask, labels=b["resp_labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    return {"tokens": tokens, "tokens_per_s": tokens / (time.perf_counter() - t0)}


def trl_sft(fresh, examples, tok, args) -> dict:
    """TRL's SFTTrainer on dataforge's token ids (so both tokenise identically): packing 'bfd'
    (padding-free), completion-only loss. Returns tokens/s over the training loop and the loss of its first
    batch at the initial weights, with that batch's sequences."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                              "completion_mask": [[int(x) for x in e.learn] for e in examples]})

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.t0

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SFTConfig(output_dir=tmp, max_length=args.max_length, packing=True, packing_strategy="bfd",
                        completion_only_loss=True, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                        learning_rate=1e-4, warmup_steps=max(1, args.steps // 10), lr_scheduler_type="cosine", max_grad_norm=1.0,
                        logging_strategy="no", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                        dataloader_num_workers=0, seed=0, include_num_input_tokens_seen="all", bf16=False)
        clock = Clock()
        trainer = SFTTrainer(model=fresh(), args=cfg, train_dataset=data, processing_class=tok, callbacks=[clock])
        first = next(iter(trainer.get_train_dataloader()))
        trainer.model.eval()
        with torch.no_grad():
            first_loss = float(trainer.compute_loss(trainer.model, dict(first)))
        trainer.model.train()
        trainer.train()
        tokens = int(trainer.state.num_input_tokens_seen)
    pos = first["position_ids"][0].tolist()
    ids = first["input_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    seqs = [tuple(ids[a:b]) for a, b in zip(starts, starts[1:])]
    return {"tokens": tokens, "tokens_per_s": tokens / clock.seconds, "first_loss": first_loss, "first_seqs": seqs}


def dataforge_loss_on(seqs, examples, fresh, pad_id: int) -> float:
    """dataforge's response-only loss on the given sequences (TRL's first batch), initial weights."""
    from dataforge.train.losses import Objective
    from dataforge.train.model import InstructModel

    by_ids = {tuple(e.input_ids): e for e in examples}
    rows = [[by_ids[s] for s in seqs]]
    cfg = TrainConfig(lm_weight=0.0)
    objective = Objective(InstructModel(fresh(), cfg.mods_dict()), cfg, 0).eval()
    with torch.no_grad():
        return float(objective(collate(rows, pad_id))["instruction"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", help="'small' (Llama-style, built from a config) or 'smollm2'")
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if SHARED.exists():
        records = [r for _, r in zip(range(args.records), read_records(SHARED)) if r.output.strip()]
        source = f"{SHARED.name} (first {len(records)})"
    else:
        records, source = toy_records(args.records), f"toy records ({args.records})"

    if args.model == "smollm2":
        from dataforge.train.smollm2 import load_smollm2

        _, tok = load_smollm2()

        def fresh():
            return load_smollm2()[0]
    else:
        tok = tiny_tokenizer(chat_template=True, vocab_size=2000)

        def fresh():
            return small_llama(len(tok), args.hidden, args.layers)

    cfg_common = dict(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=1e-4,
                      eval_fraction=0.0, warmup_ratio=0.1, seed=0, resume=False)
    tasks = TaskInfo()
    examples = encode_records(records, PromptFormatter(tok, "auto", False, args.max_length), tasks, {})
    nparams = sum(p.numel() for p in fresh().parameters())
    print(f"model: {args.model} ({nparams / 1e6:.1f}M params), data: {source}, {len(examples)} samples, "
          f"batch {args.batch_size}, {args.steps} steps, max_length {args.max_length}, torch threads {args.threads}")

    # padding fraction over one epoch's batches
    plan = dict(capacity=args.max_length, batch_size=args.batch_size, seed=0, epoch=0)
    pad_plain = padding_fraction(collate([[examples[i] for i in r] for r in b], 0) for b in
                                 plan_rows(examples, packing=False, group_by_length=False, shuffle=False, **plan))
    pad_group = padding_fraction(collate([[examples[i] for i in r] for r in b], 0) for b in
                                 plan_rows(examples, packing=False, group_by_length=True, **plan))
    pad_pack = padding_fraction(collate([[examples[i] for i in r] for r in b], 0) for b in
                                plan_rows(examples, packing=True, group_by_length=False, **plan))

    rows = []
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    hf = plain_hf_loop(fresh(), examples, pad_id, args.batch_size, args.steps, 1e-4)
    rows.append(("plain HF loop (file order, padded)", hf["tokens_per_s"], pad_plain))
    trl = trl_sft(fresh, examples, tok, args)
    rows.append(("TRL SFTTrainer, packing bfd (padding-free)", trl["tokens_per_s"], 0.0))
    ours_first = dataforge_loss_on(trl["first_seqs"], examples, fresh, pad_id)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        write_records(data, records)
        runs = [("dataforge, mods off, length-grouped", TrainConfig(pack=False, **cfg_common), pad_group),
                ("dataforge, mods off, packed", TrainConfig(pack=True, **cfg_common), pad_pack),
                ("dataforge, mods off, packed, response-only loss", TrainConfig(pack=True, lm_weight=0.0,
                                                                                 **cfg_common), pad_pack),
                ("dataforge, all mods + aux losses, packed", TrainConfig.all_mods(pack=True, **cfg_common), pad_pack)]
        for i, (name, cfg, pad) in enumerate(runs):
            import copy

            s = run_train(data, Path(tmp) / f"run{i}", cfg, model=fresh(), tokenizer=copy.deepcopy(tok),
                          progress=False)
            rows.append((name, s["tokens_per_s"], pad))

    base, trl_tps = rows[0][1], rows[1][1]
    print(f"\n{'run':48} {'tokens/s':>10} {'vs plain':>9} {'vs TRL':>7} {'padding':>8}")
    for name, tps, pad in rows:
        print(f"{name:48} {tps:10,.0f} {tps / base:8.2f}x {tps / trl_tps:6.2f}x {pad:8.1%}")
    off, sft, on = rows[3][1], rows[4][1], rows[5][1]
    print(f"\nmods-on overhead vs mods-off (both packed): {1 - on / off:+.1%}   (goal <= 15%)")
    print(f"mods off vs plain loop: {rows[2][1] / base:.2f}x unpacked, {off / base:.2f}x packed   (goal >= 1.0x)")
    print(f"mods off vs TRL SFTTrainer (packed): {off / trl_tps:.2f}x dual loss, {sft / trl_tps:.2f}x response-only "
          f"loss   (goal >= 1.0x)")
    print(f"first-batch loss at the initial weights ({len(trl['first_seqs'])} samples): TRL {trl['first_loss']:.6f}, "
          f"dataforge {ours_first:.6f}, difference {abs(trl['first_loss'] - ours_first):.2e}   (goal: equal)")
    print(f"padding: {pad_plain:.1%} plain, {pad_group:.1%} length-grouped, {pad_pack:.1%} packed   (goal < 5% packed)")
    print(json.dumps({"rows": [{"run": n, "tokens_per_s": round(t, 1), "padding": round(p, 4)} for n, t, p in rows]}))


if __name__ == "__main__":
    main()
