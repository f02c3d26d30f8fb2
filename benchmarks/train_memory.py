"""Memory per parameter of full fine-tuning, LoRA and QLoRA: computed, and measured for what runs here.

Measured = bytes of the tensors a training step keeps (weights, gradients, AdamW moments) after one real
optimizer step of dataforge's trainer objects, divided by the base model's parameter count. Activations are
left out (they scale with batch and length, not with parameters). QLoRA needs CUDA + bitsandbytes: where
they are absent it is computed only.

    python benchmarks/train_memory.py                  # SmolLM2-135M's shape (random weights)
    python benchmarks/train_memory.py --hidden 256 --layers 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.losses import Objective  # noqa: E402
from dataforge.train.lora import apply_lora, param_counts  # noqa: E402
from dataforge.train.model import InstructModel  # noqa: E402
from dataforge.train.trainer import param_groups  # noqa: E402


def build(hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    return LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                                        num_hidden_layers=layers, num_attention_heads=heads,
                                        num_key_value_heads=3 if heads % 3 == 0 else heads, tie_word_embeddings=True))


def measured(cfg: TrainConfig, hidden: int, layers: int) -> tuple[float, dict]:
    """Bytes kept by weights + grads + AdamW state after one step, per base parameter."""
    model = build(hidden, layers)
    n_base = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if cfg.lora:
        apply_lora(model, cfg)
    objective = Objective(InstructModel(model, cfg.mods_dict()), cfg, 0)
    opt = torch.optim.AdamW(param_groups(objective, cfg))
    ids = torch.randint(0, 49152, (1, 32))
    batch = {"input_ids": ids, "position_ids": torch.arange(32)[None], "segment_ids": torch.full_like(ids, 4),
             "sample_idx": torch.zeros_like(ids), "lm_labels": ids, "resp_labels": ids,
             "after_inst": torch.ones_like(ids, dtype=torch.bool), "task_ids": torch.tensor([-100]),
             "complexity": torch.zeros(1), "temp_target": torch.tensor([float("nan")])}
    objective(batch)["loss"].backward()
    opt.step()
    seen: set[int] = set()
    total = 0
    for p in objective.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
    for state in opt.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    return total / n_base, param_counts(objective)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--lora-r", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    full_b, full_n = measured(TrainConfig(), args.hidden, args.layers)
    lora_b, lora_n = measured(TrainConfig(lora=True, lora_r=args.lora_r), args.hidden, args.layers)
    share = lora_n["trainable"] / full_n["total"]
    from dataforge.train.model import decoder_layers

    model = build(args.hidden, args.layers)
    quantised = sum(m.weight.numel() for layer in decoder_layers(model) for m in layer.modules()
                    if isinstance(m, torch.nn.Linear)) / full_n["total"]
    # bitsandbytes NF4 quantises the decoder's linear layers: 4-bit weights + double-quantised absmax (8 bits
    # per 64 weights, fp32 per 256 of those); embeddings and norms stay float (fp32 after peft's k-bit prep)
    nf4 = quantised * (0.5 + (1 + 4 / 256) / 64) + (1 - quantised) * 4
    rows = [("full fine-tuning, fp32 AdamW", 16.0, full_b),
            ("full + EWC (reference weights + Fisher)", 24.0, None),
            (f"LoRA r={args.lora_r}, fp32 frozen base", 4 + 16 * share, lora_b),
            (f"LoRA r={args.lora_r} + EWC over the adapter", 4 + 24 * share, None),
            (f"QLoRA r={args.lora_r}, NF4 base (double quant)", nf4 + 16 * share, None)]
    print(f"model: Llama-style, hidden {args.hidden}, {args.layers} layers, {full_n['total'] / 1e6:.1f}M params; "
          f"LoRA trains {lora_n['trainable']:,} ({share:.2%}) on every attention and MLP projection; "
          f"{quantised:.0%} of the weights are in those projections (what 4-bit quantises)")
    print(f"{'setup':48} {'computed B/param':>17} {'measured B/param':>17}")
    for name, computed, got in rows:
        print(f"{name:48} {computed:17.2f} {('%.2f' % got) if got is not None else 'not run here':>17}")
    print("computed: weights + gradients + AdamW moments (fp32: 4 + 4 + 8 bytes per trained parameter); "
          "activations excluded")


if __name__ == "__main__":
    main()
