"""Embedding throughput: dataforge's ONNX Runtime embedder vs raw sentence-transformers (torch), the same
model on the same texts, side by side in one run.

`--n` prompts (default 5,000, seed 0) from ../shared/data/instruct_corpus_shared.jsonl. Both sides
embed every text from scratch (no cache): raw `SentenceTransformer.encode` (batch 64, normalised; it
sorts by length itself) and `Embedder(backend="onnx", use_cache=False).encode` (the export made once
beforehand, length-sorted token-budget batches, every usable core). The machine is shared, so the two
alternate `--rounds` times and the load average is printed with every timing; the ratio is of the
summed times (each side saw the same spread of load). Also the lowest cosine between the two sides'
vectors (the export is refused below 0.9999).

    python benchmarks/embed_speed.py --n 5000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "data" / "instruct_corpus_shared.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from dataforge.quality.embed import Embedder, default_model_path
    from dataforge.quality.embed_onnx import usable_cores

    rows = [json.loads(line) for line in open(CORPUS, encoding="utf-8")]
    texts = [r["instruction"] + ("\n\n" + r["input"] if r["input"] else "") for r in random.Random(0).sample(rows, args.n)]
    raw = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    onnx = Embedder(use_cache=False, backend="onnx")
    raw.encode(texts[:64], batch_size=64)  # warm-up (first-call overheads) for both sides
    onnx.encode(texts[:64])
    print(f"{args.n:,} corpus prompts; {usable_cores()} usable cores, shared with other jobs; torch threads "
          f"{__import__('torch').get_num_threads()}\n")
    print(f"{'round':>5} {'path':34} {'seconds':>8} {'texts/s':>8} {'load avg':>8}")
    t_raw = t_onnx = 0.0
    a = b = None
    for rnd in range(1, args.rounds + 1):
        for name in ("raw sentence-transformers (torch)", "dataforge ONNX Runtime"):
            load = os.getloadavg()[0]
            t = time.perf_counter()
            if name.startswith("raw"):
                a = raw.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            else:
                b = onnx.encode(texts)
            sec = time.perf_counter() - t
            load = (load + os.getloadavg()[0]) / 2
            if name.startswith("raw"):
                t_raw += sec
            else:
                t_onnx += sec
            print(f"{rnd:>5} {name:34} {sec:8.1f} {len(texts) / sec:8.1f} {load:8.1f}", flush=True)
    cos = np.einsum("ij,ij->i", a, b)
    print(f"\nONNX Runtime vs raw sentence-transformers: {t_raw / t_onnx:.2f}x "
          f"({args.rounds * len(texts) / t_onnx:.1f} vs {args.rounds * len(texts) / t_raw:.1f} texts/s over all rounds); "
          f"lowest cosine between their vectors {cos.min():.7f}")


if __name__ == "__main__":
    main()
