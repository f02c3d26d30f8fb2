"""Trainer throughput: dataforge's loop vs a plain Hugging Face training loop, same model and data.

Prints tokens/s (real tokens, padding excluded) for
  - a plain HF loop (batches in file order, padded, `model(input_ids, attention_mask, labels).loss`),
  - dataforge with modifications off (length-grouped, then packed),
  - dataforge with every modification and auxiliary loss on (packed),
and the padding fraction with and without packing.
Goals: >= 1.0x the plain loop with mods off, <= 15% overhead with mods on, padding < 5% when packed.

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
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        write_records(data, records)
        runs = [("dataforge, mods off, length-grouped", TrainConfig(pack=False, **cfg_common), pad_group),
                ("dataforge, mods off, packed", TrainConfig(pack=True, **cfg_common), pad_pack),
                ("dataforge, all mods + aux losses, packed", TrainConfig.all_mods(pack=True, **cfg_common), pad_pack)]
        for i, (name, cfg, pad) in enumerate(runs):
            import copy

            s = run_train(data, Path(tmp) / f"run{i}", cfg, model=fresh(), tokenizer=copy.deepcopy(tok),
                          progress=False)
            rows.append((name, s["tokens_per_s"], pad))

    base = rows[0][1]
    print(f"\n{'run':44} {'tokens/s':>10} {'vs plain':>9} {'padding':>8}")
    for name, tps, pad in rows:
        print(f"{name:44} {tps:10,.0f} {tps / base:8.2f}x {pad:8.1%}")
    off, on = rows[2][1], rows[3][1]
    print(f"\nmods-on overhead vs mods-off (both packed): {1 - on / off:+.1%}   (goal <= 15%)")
    print(f"mods off vs plain loop: {rows[1][1] / base:.2f}x unpacked, {off / base:.2f}x packed   (goal >= 1.0x)")
    print(f"padding: {pad_plain:.1%} plain, {pad_group:.1%} length-grouped, {pad_pack:.1%} packed   (goal < 5% packed)")
    print(json.dumps({"rows": [{"run": n, "tokens_per_s": round(t, 1), "padding": round(p, 4)} for n, t, p in rows]}))


if __name__ == "__main__":
    main()
