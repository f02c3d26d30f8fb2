"""How well do dataforge's topic clusters recover the real sources of a mixed corpus?

Clusters ../shared/data/instruct_corpus_shared.jsonl (24,940 records from 6 public sources: GPTeacher
toolformer/codegen/roleplay, Code Alpaca, GSM8K train/test) and prints NMI and ARI of the clusters
against the `source` labels, next to what a trivial clustering scores, plus wall times.
Embeddings are cached (SQLite), so the first full run embeds everything and later runs only cluster.

    python benchmarks/cluster_quality.py              # all records
    python benchmarks/cluster_quality.py --n 2000     # a seeded random sample
    python benchmarks/cluster_quality.py --method hdbscan
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO.parent / "shared" / "data" / "instruct_corpus_shared.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--n", type=int, default=0, help="random sample of N records (0 = all)")
    ap.add_argument("--method", choices=["kmeans", "hdbscan"], default="kmeans")
    ap.add_argument("--k", type=int, default=None, help="fixed k (default: chosen by silhouette)")
    ap.add_argument("--k-max", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found (the shared corpus exists only in the project's workspace)")

    import numpy as np
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from dataforge.curate.cluster import cluster_embeddings
    from dataforge.curate.labels import ctfidf_terms
    from dataforge.quality.embed import get_embedder

    rows = [json.loads(line) for line in args.data.open(encoding="utf-8")]
    if args.n and args.n < len(rows):
        rows = random.Random(args.seed).sample(rows, args.n)
    texts = [f"{r['instruction']}\n\n{r['input']}" if r.get("input") else r["instruction"] for r in rows]
    truth = [r["source"] for r in rows]

    emb = get_embedder()
    cached_before = emb.cache.count(emb.name) if emb.cache else 0
    t0 = time.perf_counter()
    x = emb.encode(texts, progress=sys.stderr.isatty())
    t_embed = time.perf_counter() - t0
    res = cluster_embeddings(x, args.method, args.k, k_max=args.k_max, seed=args.seed)
    t1 = time.perf_counter()
    terms = ctfidf_terms(texts, res.labels)
    t_label = time.perf_counter() - t1
    pred = res.labels.tolist()

    nmi = normalized_mutual_info_score(truth, pred)
    ari = adjusted_rand_score(truth, pred)
    fixed6 = cluster_embeddings(x, "kmeans", len(set(truth)), seed=args.seed) if args.k is None else res
    nmi6 = normalized_mutual_info_score(truth, fixed6.labels.tolist())
    ari6 = adjusted_rand_score(truth, fixed6.labels.tolist())
    rand = np.random.default_rng(args.seed).integers(0, res.k, len(pred)).tolist()
    n_src = len(set(truth))
    # GSM8K's train and test splits are the same kind of text: no clustering can (or should) split them
    merged = [t.split("/")[0] if t.startswith("gsm8k/") else t for t in truth]
    purity = sum(max(Counter(t for t, p in zip(merged, pred) if p == c).values()) for c in set(pred)) / len(pred)

    print(f"corpus: {args.data.name}  records={len(rows)}  sources={n_src}  method={args.method}")
    print(f"embedding: {emb.name} dim={x.shape[1]}  {t_embed:.1f}s  ({emb.embedded} embedded now, "
          f"{cached_before} were in the cache before)")
    if res.silhouette_by_k:
        print("silhouette by k: " + "  ".join(f"{k}:{s:.3f}" for k, s in res.silhouette_by_k.items()))
    print(f"clustering: k={res.k}  {res.seconds:.1f}s   c-TF-IDF labels: {t_label:.1f}s")
    print(f"{'':28s}{'NMI':>7s}{'ARI':>7s}")
    print(f"{'dataforge (auto k=%d)' % res.k:28s}{nmi:7.3f}{ari:7.3f}")
    if args.k is None:
        print(f"{'kmeans, k = #sources (%d)' % n_src:28s}{nmi6:7.3f}{ari6:7.3f}")
    print(f"{'same, gsm8k splits merged':28s}{normalized_mutual_info_score(merged, pred):7.3f}"
          f"{adjusted_rand_score(merged, pred):7.3f}   (5 source groups)")
    print(f"{'random labels, same k':28s}{normalized_mutual_info_score(truth, rand):7.3f}{adjusted_rand_score(truth, rand):7.3f}")
    print(f"purity (share of records in their topic's majority source group): {purity:.3f}")
    print(f"wall time for {len(rows)} records: embed {t_embed:.1f}s + cluster {res.seconds:.1f}s + "
          f"label {t_label:.1f}s = {t_embed + res.seconds + t_label:.1f}s")
    print("topics (size, majority source, terms):")
    for c in range(res.k):
        members = [truth[i] for i in range(len(pred)) if pred[i] == c]
        top = max(set(members), key=members.count)
        print(f"  {c:02d} {len(members):6d}  {top:22s} {members.count(top) / len(members):5.0%}  {', '.join(terms.get(c, []))}")
    if args.json:
        args.json.write_text(json.dumps({"records": len(rows), "k": res.k, "nmi": nmi, "ari": ari,
                                         "nmi_k_sources": nmi6, "purity": purity,
                                         "nmi_gsm8k_merged": normalized_mutual_info_score(merged, pred),
                                         "ari_gsm8k_merged": adjusted_rand_score(merged, pred), "ari_k_sources": ari6, "embed_s": t_embed,
                                         "cluster_s": res.seconds, "silhouette_by_k": res.silhouette_by_k}, indent=2))


if __name__ == "__main__":
    main()
