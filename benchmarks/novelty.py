"""ROUGE-L novelty filter: rouge-score loop (as Self-Instruct runs it) vs dataforge's NoveltyIndex.

Both make Self-Instruct's sequential decision over a stream of instructions: keep a candidate iff its
max ROUGE-L F-measure against every instruction kept so far is <= 0.7, then add it to the pool.

    python benchmarks/novelty.py                 # 4,000 compared (rouge-score takes ~15 min), then scale runs
    python benchmarks/novelty.py --limit 1000    # quicker comparison
    python benchmarks/novelty.py --no-scale      # comparison only
    python benchmarks/novelty.py --shuffle 0 --no-scale   # 4,000 drawn at random: the pool grows large

Needs the `test` extra (rouge-score) and ../shared/data/instruct_corpus_shared.jsonl
(or --corpus PATH, any JSONL with an "instruction" key).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataforge.generate.novelty import NoveltyIndex  # noqa: E402

SHARED = Path(os.environ.get("DATAFORGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_CORPUS = SHARED / "instruct_corpus_shared.jsonl"
DEFAULT_SEEDS = SHARED / "self_instruct_seed_tasks.jsonl"


def load_instructions(path: Path, limit: int | None = None) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(out) >= limit:
                break
            out.append(json.loads(line)["instruction"])
    return out


def rouge_score_loop(texts: list[str], threshold: float, seeds: list[str] = ()) -> tuple[list[bool], float]:
    """Self-Instruct's filter: score the candidate against every pool instruction (seeds + kept) with rouge-score."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool: list[str] = list(seeds)
    kept = []
    start = time.perf_counter()
    for inst in texts:
        scores = [scorer.score(inst, other)["rougeL"].fmeasure for other in pool]
        keep = not scores or max(scores) <= threshold
        kept.append(keep)
        if keep:
            pool.append(inst)
    return kept, time.perf_counter() - start


def dataforge_loop(texts: list[str], threshold: float, seeds: list[str] = ()) -> tuple[list[bool], float, NoveltyIndex]:
    start = time.perf_counter()
    index = NoveltyIndex(seeds, threshold=threshold)
    kept = [index.add_if_novel(t).kept for t in texts]
    return kept, time.perf_counter() - start, index


def synthetic(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """n new instructions, each the concatenation of two random corpus instructions."""
    rng = random.Random(seed)
    return [f"{rng.choice(texts)} {rng.choice(texts)}" for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--limit", type=int, default=4000, help="instructions in the head-to-head comparison")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--synthetic", type=int, default=100_000, help="size of the synthetic-by-concatenation run")
    ap.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                    help="compare on --limit instructions drawn at random from the whole corpus (the first ones "
                         "share long tool preambles, so few are kept and the pool stays small)")
    ap.add_argument("--no-scale", action="store_true", help="skip the dataforge-only runs on the full corpus")
    ap.add_argument("--seeds", type=Path, default=None, help="seed tasks that start the pool, as in Self-Instruct "
                    f"(e.g. {DEFAULT_SEEDS.name}); default: an empty pool")
    args = ap.parse_args()
    if not args.corpus.exists():
        sys.exit(f"corpus not found: {args.corpus} (pass --corpus)")

    rows = []
    seeds = load_instructions(args.seeds) if args.seeds else []
    if args.shuffle is None:
        head, which = load_instructions(args.corpus, args.limit), "first"
    else:
        everything = load_instructions(args.corpus)
        head, which = random.Random(args.shuffle).sample(everything, min(args.limit, len(everything))), "shuffled"
    print(f"comparing on the {which} {len(head):,} instructions of {args.corpus.name} (threshold {args.threshold}, "
          f"pool starts with {len(seeds)} seeds) ...", flush=True)
    ours, t_ours, index = dataforge_loop(head, args.threshold, seeds)
    print(f"  dataforge    {t_ours:10.3f} s  kept {sum(ours):,}", flush=True)
    ref, t_ref = rouge_score_loop(head, args.threshold, seeds)
    print(f"  rouge-score  {t_ref:10.3f} s  kept {sum(ref):,}", flush=True)
    identical = ours == ref
    diffs = [i for i, (a, b) in enumerate(zip(ours, ref)) if a != b]
    with_seeds = f" + {len(seeds)} seeds" if seeds else ""
    rows.append((f"{which} {len(head):,}{with_seeds} (rouge-score loop)", len(head), sum(ref), t_ref, ""))
    rows.append((f"{which} {len(head):,}{with_seeds} (dataforge)", len(head), sum(ours), t_ours,
                 f"{t_ref / t_ours:,.0f}x faster; identical decisions: {identical}"))

    if not args.no_scale:
        full = load_instructions(args.corpus)
        kept, t_full, idx = dataforge_loop(full, args.threshold)
        rows.append((f"all {len(full):,} (dataforge)", len(full), sum(kept), t_full,
                     f"{idx.stats.candidate_pairs:,} pairs scored of {len(full) * (len(full) - 1) // 2:,}"))
        print(f"  all corpus   {t_full:10.3f} s  kept {sum(kept):,}", flush=True)
        syn = synthetic(full, args.synthetic)
        kept, t_syn, idx = dataforge_loop(syn, args.threshold)
        rows.append((f"{len(syn):,} synthetic concatenations (dataforge)", len(syn), sum(kept), t_syn,
                     f"{idx.stats.candidate_pairs:,} pairs scored"))
        print(f"  synthetic    {t_syn:10.3f} s  kept {sum(kept):,}", flush=True)

    print()
    print("| run | instructions | kept | seconds | note |")
    print("|---|---:|---:|---:|---|")
    for name, n, k, t, note in rows:
        print(f"| {name} | {n:,} | {k:,} | {t:,.3f} | {note} |")
    print()
    print(f"speed-up: {t_ref / t_ours:,.1f}x  (goal >= 100x)   identical kept sets: {identical}")
    if diffs:
        print(f"DIFFERENT decisions at positions {diffs[:20]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
