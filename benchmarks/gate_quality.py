"""Calibrates and measures the quality gate on real data (no model judges: embeddings + heuristics).

Benchmark: a stratified sample of ../shared/data/instruct_corpus_shared.jsonl (per `source`,
proportional to its size, at least 40 each; seed 0). Every sampled pair is a positive (real, kept
verbatim). Negatives are made from the same sample, one corruption each, in equal thirds:
  swap        the response of another sampled record (half from the same source: the hard case)
  truncate    the response cut at a random word boundary between 30% and 90% of its length
  constraint  a constraint the real response violates (word limit, no commas, fixed ending,
              keyword, lowercase, JSON) is attached in meta.constraints and its phrase appended to
              the instruction, as `dataforge evolve` does
The alignment_emb pool is 512 corpus records outside the sample (no leakage of true prompts).
Dedup is off (a swapped negative shares its prompt with a positive).

Prints per check: how often it flags real pairs, its recall per corruption and its precision;
the whole gate with the configured thresholds; the best (coherence, alignment_emb) thresholds on a
grid that keep >= --min-real of real pairs accepted; and the share of real pairs that high-stakes
routing sends to review. Goal: >= 95% of corrupted pairs not accepted, >= 90% of real pairs accepted.

    python benchmarks/gate_quality.py            # 1,500 positives + 1,500 negatives
    python benchmarks/gate_quality.py --n 300    # quicker
Embedding costs ~100 texts/s on 2 quiet cores; the cache (DATAFORGE_CACHE_DIR) makes re-runs fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dataforge.constraints import check, make_spec  # noqa: E402
from dataforge.records import Record  # noqa: E402
from dataforge.quality.checks import Checker, EndingShapes  # noqa: E402
from dataforge.quality.embed import get_embedder  # noqa: E402
from dataforge.quality.rules import decide, load_rules  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "instruct_corpus_shared.jsonl"
KINDS = ("swap", "truncate", "constraint")


def stratified(rows: list[dict], n: int, rng: random.Random, min_per: int = 40) -> list[dict]:
    by = defaultdict(list)
    for r in rows:
        by[r["source"]].append(r)
    out = []
    for src, items in sorted(by.items()):
        k = max(min_per, round(n * len(items) / len(rows)))
        out += rng.sample(items, min(k, len(items)))
    rng.shuffle(out)
    return out[:n] if len(out) > n else out


def violated_constraint(out: str, instr: str, rng: random.Random):
    """A constraint spec that `out` breaks, or None."""
    words = len(out.split())
    options = []
    if words >= 20:
        options.append(make_spec("word_count", relation="at_most", n=max(5, words // 3)))
    if "," in out:
        options.append(make_spec("no_commas"))
    options.append(make_spec("end_with", phrase=rng.choice(["Hope this helps.", "That is all."])))
    options.append(make_spec("include_keywords", keywords=[rng.choice(["serendipity", "lighthouse", "quasar"])]))
    if any(c.isupper() for c in out):
        options.append(make_spec("lowercase"))
    if not out.lstrip().startswith(("{", "[")):
        options.append(make_spec("json_format"))
    rng.shuffle(options)
    for spec in options:
        if not check(spec, out).ok:
            return spec
    return None


def build(n: int, seed: int):
    rows = [json.loads(line) for line in open(CORPUS, encoding="utf-8")]
    rng = random.Random(seed)
    sample = stratified(rows, n, rng)
    in_sample = {id(r) for r in sample}
    rest = [r for r in rows if id(r) not in in_sample]
    pool = [r["instruction"] + ("\n\n" + r["input"] if r["input"] else "") for r in rng.sample(rest, 512)]

    def rec(r, **kw):
        base = {"instruction": r["instruction"], "input": r["input"], "output": r["output"],
                "meta": {"source": r["source"]}}
        base.update(kw)
        return Record(**base)

    pos = [rec(r) for r in sample if r["output"].strip()]
    by_src = defaultdict(list)
    for r in sample:
        by_src[r["source"]].append(r)
    neg, kinds = [], []
    for k, r in enumerate(sample):
        kind = KINDS[k % 3]
        out = r["output"]
        if kind == "swap":
            pool_src = by_src[r["source"]] if k % 2 else sample
            other = rng.choice(pool_src)
            while other is r:
                other = rng.choice(pool_src)
            neg.append(rec(r, output=other["output"], meta={"source": r["source"], "corruption": "swap"}))
        elif kind == "truncate":
            cuts = [i for i, ch in enumerate(out) if ch.isspace() and 0.3 * len(out) < i < 0.9 * len(out)]
            if len(out.split()) < 8 or not cuts:
                continue
            neg.append(rec(r, output=out[:rng.choice(cuts)], meta={"source": r["source"], "corruption": "truncate"}))
        else:
            spec = violated_constraint(out, r["instruction"], rng)
            if spec is None:
                continue
            neg.append(rec(r, instruction=r["instruction"].rstrip() + " " + spec["phrase"],
                           meta={"source": r["source"], "corruption": "constraint", "constraints": [spec]}))
        kinds.append(kind)
    return pos, neg, kinds, pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500, help="positives in the stratified sample (default 1500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=None, help="gate YAML to evaluate (default: the shipped defaults)")
    ap.add_argument("--min-real", type=float, default=0.93, help="real pairs that must stay accepted when "
                    "choosing thresholds (default 0.93, leaving margin over the 0.90 goal)")
    ap.add_argument("--shapes-from", choices=("mixed", "real"), default="mixed",
                    help="learn answer-ending conventions from the whole (50%% corrupted) input or the real half")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if not CORPUS.exists():
        sys.exit(f"corpus not found: {CORPUS}")

    t0 = time.time()
    pos, neg, kinds, pool = build(args.n, args.seed)
    rules = load_rules(args.config)
    emb = get_embedder()
    # Answer conventions are learned from the input. This input is half corrupted, far more than a real
    # file; --shapes-from real learns them from the real half only (a file with few bad records).
    shapes = EndingShapes()
    for r in (pos + neg if args.shapes_from == "mixed" else pos):
        shapes.add(r)
    shapes.finish()
    checker = Checker(rules, emb, reference=(), pool_prompts=pool, shapes=shapes)
    records = pos + neg
    scored = []
    for i in range(0, len(records), 256):
        scored += asyncio.run(checker.score(records[i:i + 256]))
    t_score = time.time() - t0
    label = np.array([0] * len(pos) + [1] * len(neg))
    kind = np.array(["real"] * len(pos) + kinds)

    names = [n for n in rules.checks if any(n in s.scores for s in scored)]
    print(f"gate_quality: {len(pos)} real pairs, {len(neg)} corrupted ({dict(Counter(kinds))}), "
          f"sources {dict(Counter(r.meta['source'] for r in pos))}")
    print(f"scored in {t_score:.0f} s, {emb.embedded} texts embedded (the rest from the cache) — measured on this "
          "2-core CPU machine, shared with other helpers\n")

    def fails(s, name):
        return rules.checks[name].fails(s.scores.get(name))

    figures: dict = {"n_real": len(pos), "n_corrupted": len(neg), "checks": {}}
    print(f"{'check':14s} {'flags real':>10s} " + " ".join(f"{'recall ' + k:>17s}" for k in KINDS) + f" {'precision':>10s}")
    for name in names:
        f = np.array([fails(s, name) for s in scored])
        real_rate = f[label == 0].mean()
        rec_k = {k: f[kind == k].mean() if (kind == k).any() else float("nan") for k in KINDS}
        prec = f[label == 1].sum() / max(f.sum(), 1)
        figures["checks"][name] = {"flags_real": real_rate, **{f"recall_{k}": v for k, v in rec_k.items()},
                                   "precision": prec}
        print(f"{name:14s} {real_rate:10.1%} " + " ".join(f"{rec_k[k]:17.1%}" for k in KINDS) + f" {prec:10.1%}")

    def gate(coh_min=None, al_min=None, local_min=None):
        r2 = rules
        if coh_min is not None:
            r2 = rules.model_copy(deep=True)
            r2.checks["coherence"].min = coh_min
            r2.checks["alignment_emb"].min = al_min
            r2.checks["alignment_local"].min = local_min
        return np.array([decide(s.scores, r2)[0] == "accepted" for s in scored])

    acc = gate()
    real_acc = acc[label == 0].mean()
    caught = 1 - acc[label == 1].mean()
    print(f"\nwhole gate (configured thresholds): real accepted {real_acc:.1%} | corrupted not accepted {caught:.1%} "
          + " ".join(f"[{k}: {1 - acc[kind == k].mean():.1%}]" for k in KINDS))
    figures["gate"] = {"real_accepted": real_acc, "corrupted_not_accepted": caught,
                       **{f"caught_{k}": 1 - acc[kind == k].mean() for k in KINDS}}

    best = None
    for c in (0.2, 0.25, 0.3, 0.35, 0.4):
        for a in (0.9, 0.95, 0.98):
            for lo in (0.8, 0.85, 0.9, 0.95):
                g = gate(c, a, lo)
                ra, ca = g[label == 0].mean(), 1 - g[label == 1].mean()
                if ra >= args.min_real and (best is None or ca > best[3] or (ca == best[3] and ra > best[4])):
                    best = (c, a, lo, ca, ra)
    if best:
        print(f"best on grid (real accepted >= {args.min_real:.0%}): coherence.min={best[0]} "
              f"alignment_emb.min={best[1]} alignment_local.min={best[2]} -> real accepted {best[4]:.1%}, "
              f"corrupted not accepted {best[3]:.1%}")
        figures["best"] = {"coherence_min": best[0], "alignment_emb_min": best[1], "alignment_local_min": best[2],
                           "real_accepted": best[4], "corrupted_not_accepted": best[3]}
    hs = Counter(d for s in scored[:len(pos)] for d in s.domains)
    share = sum(1 for s in scored[:len(pos)] if s.domains) / len(pos)
    print(f"high-stakes routing would send {share:.1%} of real pairs to review {dict(hs)} "
          f"(not counted above: those are flagged for a human on purpose)")
    src = np.array([r.meta["source"] for r in records])
    print("\nreal accepted by source: " + ", ".join(
        f"{s} {acc[(label == 0) & (src == s)].mean():.1%}" for s in sorted(set(src))))
    print("corrupted not accepted by source: " + ", ".join(
        f"{s} {1 - acc[(label == 1) & (src == s)].mean():.1%}" for s in sorted(set(src))))
    figures["high_stakes_share"] = share
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=float))


if __name__ == "__main__":
    main()
