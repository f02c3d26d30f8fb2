"""Filter and balance at 10k / 100k / 1M records: records/s, peak memory, time per phase, and dedup
precision/recall against planted duplicate groups.

The records are built from the shared corpus (../shared/data/instruct_corpus_shared.jsonl, 24,940 real
instruction/response pairs) in known groups. A group is one corpus record (its base) and copies of it:
- exact copies: the base's instruction and input with case and whitespace changed (the gate's exact
  pass folds both); MiniLM is uncased and splits on whitespace, so such a copy gives the model the very
  same token ids as its base: `prepare` checks that with the tokenizer, copy by copy, and stores the
  base's vector for it (a copy whose ids differ is embedded by the model instead);
- for a share of the groups (`--near-share`), one near copy: a short sentence appended to the
  instruction, embedded by the model like any new text.
Every member keeps its base's response. Groups = min(corpus, N / 4): at 1M records that is 24,940 groups
of about 40 records, mostly exact copies, so the 1M run measures memory and throughput of the streaming
passes and the dedup over a million records, not a million distinct texts (embedding a million new texts
takes days on this 2-core machine; say so when quoting the figures).

Each stage runs in its own process (`child`), which loads the embedder first and reports its resident
memory then ("models") and its peak at the end (ru_maxrss): "beyond models" is the difference. The
embedding cache (`--cache`, used as DATAFORGE_CACHE_DIR) is filled by `prepare` before the timed runs.

    python benchmarks/scale.py --n 10000 100000 1000000 --work /tmp/scale-bench --cache /tmp/scale-cache
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "data" / "instruct_corpus_shared.jsonl"
SUFFIXES = (" Please keep the answer short.", " Answer in plain words.", " Explain briefly.")


# ---------------------------------------------------------------------------- the records


def _exact_copy(text: str, k: int) -> str:
    """A copy the gate's normalisation and MiniLM's uncased tokenizer both see as the same text."""
    words = text.split(" ")
    how = k % 4
    if how == 0:
        return text.upper()
    if how == 1:
        return text.lower()
    if how == 2:
        return "  ".join(words)
    return f"  {text.swapcase()}\n"


def build(n: int, seed: int, near_share: float, out: Path) -> dict[str, int]:
    """Write n records in known groups to `out`; returns counts by kind."""
    rows = [json.loads(line) for line in open(CORPUS, encoding="utf-8")]
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    groups = min(len(rows), max(1, n // 4))
    near = set(rng.sample(range(groups), int(groups * near_share)))
    kinds: Counter = Counter()
    with open(out, "w", encoding="utf-8") as fh:
        for slot in range(n):
            g, k = slot % groups, slot // groups  # round robin: a group's copies are spread over the file
            base = rows[order[g]]
            instruction, inp = base["instruction"], base["input"]
            if k == 1 and g in near:
                instruction, kind = instruction.rstrip() + SUFFIXES[g % len(SUFFIXES)], "near"
            elif k >= 1:
                instruction, inp, kind = _exact_copy(instruction, k), _exact_copy(inp, k) if inp else inp, "exact"
            else:
                kind = "base"
            kinds[kind] += 1
            fh.write(json.dumps({"id": f"g{g}-m{k}", "instruction": instruction, "input": inp, "output": base["output"],
                                 "meta": {"source": base["source"], "scale_group": g, "scale_kind": kind}}) + "\n")
    return dict(kinds)


def _prompt(r: dict) -> str:
    return r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")


def prepare(path: Path, cache: Path) -> dict[str, int]:
    """Every prompt and response of `path` in the embedding cache (`--cache`). Bases, responses and near
    copies not cached yet go through the model; an exact copy whose token ids equal its base's (checked
    with the tokenizer) gets its base's vector, one whose ids differ goes through the model too. Streams
    the file twice; memory holds the groups' bases only."""
    os.environ["DATAFORGE_CACHE_DIR"] = str(cache)
    from dataforge.quality.embed import get_embedder, text_key
    from dataforge.quality.embed_onnx import _tokenizer

    emb = get_embedder()
    counts: Counter = Counter()

    def missing(texts: list[str]) -> list[str]:
        keys = [text_key(t) for t in texts]
        have = emb.cache.get_many(emb.name, keys)
        counts["cached"] += len(set(keys) & set(have))
        return [t for t, k in zip(texts, keys) if k not in have]

    base: dict[int, str] = {}
    own: dict[str, None] = {}  # texts the model must see once: bases, responses, near copies
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r["meta"]["scale_kind"] != "exact":
            own[_prompt(r)] = None
            own[r["output"]] = None
        if r["meta"]["scale_kind"] == "base":
            base[r["meta"]["scale_group"]] = _prompt(r)
    todo = missing(list(own))
    emb.encode(todo, progress=True)
    tok = _tokenizer(emb.path)

    def copies() -> Iterator[list[tuple[str, str]]]:
        chunk: list[tuple[str, str]] = []
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            if r["meta"]["scale_kind"] == "exact":
                chunk.append((_prompt(r), base[r["meta"]["scale_group"]]))
                if len(chunk) >= 5000:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    for chunk in copies():
        need = dict.fromkeys(missing(list(dict.fromkeys(c for c, _ in chunk))))
        pairs = [(c, b) for c, b in dict(chunk).items() if c in need]
        if not pairs:
            continue
        ids = tok.encode_batch([c for c, _ in pairs])
        ref = tok.encode_batch([b for _, b in pairs])
        same = [(c, b) for (c, b), x, y in zip(pairs, ids, ref) if x.ids == y.ids]
        differ = [c for (c, _), x, y in zip(pairs, ids, ref) if x.ids != y.ids]
        if same:
            vecs = emb.encode([b for _, b in same])
            emb.cache.put_many(emb.name, [(text_key(c), v) for (c, _), v in zip(same, vecs)])
        emb.encode(differ)
        counts["copied_same_token_ids"] += len(same)
        counts["embedded_token_ids_differ"] += len(differ)
    counts["embedded_by_model"] = emb.embedded
    return dict(counts)


# ---------------------------------------------------------------------------- one stage, measured


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not carry the parent's peak
    over fork and exec)."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(stage: str, src: str, out: str) -> None:
    """Run one stage here and print what it measured (JSON on the last line)."""
    from dataforge.quality.embed import get_embedder

    emb = get_embedder()
    if emb.backend == "onnx":
        emb.onnx.encode(["load the model"])  # the model in memory before the baseline is read
    else:
        emb.encode(["load the model"])
    import psutil

    models = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    if stage == "filter":
        from dataforge.quality.gate import FilterConfig, run_filter

        summary = run_filter(src, out, FilterConfig(no_llm=True), progress=False)
    else:
        from dataforge.curate.balance import BalanceConfig, run_balance

        summary = run_balance(src, out, BalanceConfig(), progress=False)
    wall = time.perf_counter() - t0
    peak = _peak_rss()
    print(json.dumps({"wall_s": wall, "models_rss": models, "peak_rss": peak, "in": summary.records_in,
                      "out": summary.out, "details": summary.details}))


def measure(stage: str, src: Path, out: Path, cache: Path) -> dict:
    env = {**os.environ, "DATAFORGE_CACHE_DIR": str(cache), "DATAFORGE_PROGRESS": "0",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    load = os.getloadavg()[0]
    res = subprocess.run([sys.executable, __file__, "child", stage, str(src), str(out)], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{res.stderr[-3000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    got["load"] = (load + os.getloadavg()[0]) / 2
    return got


# ---------------------------------------------------------------------------- dedup against the groups


def dedup_quality(out: Path) -> dict[str, float]:
    """Precision: duplicates whose kept record is in their own group. Recall: of the records that should
    go (all but one per group, among records the gate did not reject for another reason), how many did."""
    from dataforge.stage import SideFiles

    side = SideFiles(out)
    live: Counter = Counter()
    right = wrong = 0
    for path in (out, side.review, side.rejected):
        if not path.is_file():
            continue
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            g = r["meta"]["scale_group"]
            d = r["meta"].get("duplicate")
            if d:
                live[g] += 1
                if int(d["of"][1:].split("-m")[0]) == g:
                    right += 1
                else:
                    wrong += 1
            elif r["status"] != "rejected":
                live[g] += 1
    should = sum(n - 1 for n in live.values() if n > 1)
    return {"precision": right / max(right + wrong, 1), "recall": right / max(should, 1),
            "cross_group": wrong, "removed": right + wrong, "should": should}


# ---------------------------------------------------------------------------- main


def _mb(x: float) -> str:
    return f"{x / 2**20:,.0f} MB"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        return child(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 100000, 1000000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/dataforge-scale"))
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache folder (default: <work>/cache)")
    ap.add_argument("--near-share", type=float, default=0.2, help="share of groups with a near copy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cache = args.cache or args.work / "cache"
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, shared with other jobs; load average at start {os.getloadavg()}")
    rows = []
    for n in args.n:
        d = args.work / f"n{n}"
        d.mkdir(exist_ok=True)
        src = d / "in.jsonl"
        t = time.perf_counter()
        kinds = build(n, args.seed, args.near_share, src)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        prep = prepare(src, cache)
        print(f"\nN={n:,}: built {kinds} in {t_build:.0f} s; cache prepared in {time.perf_counter() - t:.0f} s: {prep}",
              flush=True)
        f = measure("filter", src, d / "gated.jsonl", cache)
        q = dedup_quality(d / "gated.jsonl")
        b = measure("balance", d / "gated.jsonl", d / "balanced.jsonl", cache)
        for name, m in (("filter", f), ("balance", b)):
            print(f"  {name}: {m['wall_s']:.0f} s, {n / m['wall_s']:,.0f} rec/s, peak {_mb(m['peak_rss'])} "
                  f"(models {_mb(m['models_rss'])}, beyond {_mb(m['peak_rss'] - m['models_rss'])}), "
                  f"load {m['load']:.1f}; phases {m['details'].get('phase_s')}", flush=True)
        print(f"  dedup {f['details']['dedup']}: precision {q['precision']:.4f}, recall {q['recall']:.4f} "
              f"({q['removed']:,} removed, {q['should']:,} expected, {q['cross_group']} across groups)", flush=True)
        rows.append((n, f, b, q))
    print("\n| records | stage | wall s | records/s | peak RSS | beyond models | load | phases (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for n, f, b, q in rows:
        for name, m in (("filter", f), ("balance", b)):
            phases = ", ".join(f"{k} {v:.0f}" for k, v in (m["details"].get("phase_s") or {}).items())
            print(f"| {n:,} | {name} | {m['wall_s']:.0f} | {n / m['wall_s']:,.0f} | {_mb(m['peak_rss'])} | "
                  f"{_mb(m['peak_rss'] - m['models_rss'])} | {m['load']:.1f} | {phases} |")
    print("\n| records | dedup exact / near / semantic | precision | recall | across groups |")
    print("|---:|---|---:|---:|---:|")
    for n, f, b, q in rows:
        c = f["details"]["dedup"]
        print(f"| {n:,} | {c['exact']:,} / {c['near']:,} / {c['semantic']:,} | {q['precision']:.4f} | "
              f"{q['recall']:.4f} | {q['cross_group']} |")
    if len(rows) >= 2:
        (n1, f1, b1, _), (n2, f2, b2, _) = rows[-2], rows[-1]
        for name, m1, m2 in (("filter", f1, f2), ("balance", b1, b2)):
            slope = ((m2["peak_rss"] - m2["models_rss"]) - (m1["peak_rss"] - m1["models_rss"])) / (n2 - n1)
            print(f"RSS slope beyond models, {name}, {n1:,} -> {n2:,} records: {slope:,.1f} bytes/record")


if __name__ == "__main__":
    main()
