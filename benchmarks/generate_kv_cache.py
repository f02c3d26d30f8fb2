"""Generation speed of a modified model with and without the KV cache, same model, same prompts, greedy.

Prints tokens/s of each path and whether they generated the same tokens (they must). The modules are moved
off their no-op initialisation (as training would), so every one of them takes part.

    python benchmarks/generate_kv_cache.py                          # SmolLM2-135M's shape, random weights
    python benchmarks/generate_kv_cache.py --model smollm2          # the real SmolLM2-135M-Instruct weights
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import PromptFormatter  # noqa: E402
from dataforge.train.model import InstructModel, add_inst_tokens  # noqa: E402

PROMPTS = ["Write a short poem about the sea.", "Explain why the sky is blue in two sentences.",
           "Give three tips for staying focused while studying."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shape", help="'shape' (SmolLM2-135M's shape, random) or 'smollm2'")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dataforge.train.smollm2 import load_smollm2

    if args.model == "smollm2":
        base, tok = load_smollm2()
    else:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from dataforge.train.smollm2 import smollm2_gguf_path

        path = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536,
                                            num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                            tie_word_embeddings=True))
    cfg = TrainConfig.all_mods()
    prompt_only = add_inst_tokens(tok)
    base.resize_token_embeddings(len(tok))
    model = InstructModel(base, cfg.mods_dict(), 3, prompt_only).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("base."):
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    fmt = PromptFormatter(tok, "auto", True, 512)
    rows, texts = [], {}
    for use_cache in (True, False):
        tokens, t0 = 0, time.perf_counter()
        for prompt in PROMPTS:
            text, _ = model.generate(fmt, prompt, max_new_tokens=args.new_tokens, temperature=0.0, use_cache=use_cache)
            texts.setdefault(prompt, []).append(text)
            tokens += len(tok(text, add_special_tokens=False)["input_ids"])
        rows.append((use_cache, tokens, tokens / (time.perf_counter() - t0)))
    same = all(a == b for a, b in texts.values())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model} ({n_params / 1e6:.0f}M params, every modification on), {len(PROMPTS)} prompts, "
          f"greedy, up to {args.new_tokens} new tokens, torch threads {args.threads}")
    print(f"{'path':28} {'tokens':>7} {'tokens/s':>9}")
    for use_cache, tokens, tps in rows:
        print(f"{'KV cache' if use_cache else 'no cache (recompute all)':28} {tokens:7d} {tps:9.1f}")
    print(f"speed-up {rows[0][2] / rows[1][2]:.1f}x; same greedy text: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
