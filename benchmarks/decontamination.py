"""Decontamination: does `--decontaminate` find planted benchmark items, leave clean records alone, and
keep up with a stream?

1. Detection. GSM8K's test split (``source == gsm8k/test`` in the shared corpus, 1,319 items) is the
   benchmark. 50 of its items are planted into 5,000 records drawn from the rest of the corpus: 25
   verbatim, 25 with one word replaced every 20 words (in the question and the answer). Prints the share
   of planted records flagged and of clean records flagged (target: >= 98% and < 0.5%).
2. Throughput against a 10,000-item benchmark (GSM8K train + test + Code Alpaca, the first 10,000), over
   the other sources' records (toolformer, codegen, roleplay; 14,131 records, repeated to `--records`):
   the lookup alone (records/s, one process), then the whole `dataforge decontaminate` command (read,
   check, write): all in one process (`--workers 0`), with its default lookup workers (one per core
   beyond the first: the command reads and writes while they look up), and as two `--shard --workers 0`
   processes side by side. Target: >= 20k records/s on 2 cores. The index build is timed once, then
   loaded from the cache.

    python benchmarks/decontamination.py [--records 100000] [--data /work/shared/data]

Say the machine's load when you quote the figures: the script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CORPUS = "instruct_corpus_shared.jsonl"
REPLACEMENT = "zebra"


def change_every(text: str, every: int = 20) -> str:
    """`text` with one word replaced every `every` words (the 10th, 30th, 50th, ...)."""
    words = text.split(" ")
    for k in range(every // 2, len(words), every):
        words[k] = REPLACEMENT if words[k] != REPLACEMENT else "giraffe"
    return " ".join(words)


def planted_dataset(rows: list[dict], n_clean: int = 5000, n_planted: int = 50, seed: int = 0):
    """(records, planted flags, benchmark rows): clean records from outside gsm8k/test plus planted items,
    half verbatim and half with a word changed every ~20 words, shuffled."""
    rng = random.Random(seed)
    bench = [r for r in rows if r["source"] == "gsm8k/test"]
    rest = [r for r in rows if r["source"] != "gsm8k/test"]
    clean = rng.sample(rest, n_clean)
    planted = []
    for k, item in enumerate(rng.sample(bench, n_planted)):
        if k % 2:
            item = {**item, "instruction": change_every(item["instruction"]), "output": change_every(item["output"])}
        planted.append({**item, "source": "planted-changed" if k % 2 else "planted-verbatim"})
    data = [(r, False) for r in clean] + [(r, True) for r in planted]
    rng.shuffle(data)
    return [r for r, _ in data], [p for _, p in data], bench


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: r[k] for k in ("instruction", "input", "output")}) + "\n")


def detection(rows: list[dict], work: Path) -> dict:
    from dataforge.io import read_records
    from dataforge.quality.decontaminate import DecontaminateConfig, run_decontaminate

    data, planted, bench = planted_dataset(rows)
    _write(work / "gsm8k_test.jsonl", bench)
    _write(work / "data.jsonl", data)
    summary = run_decontaminate(work / "data.jsonl", work / "clean.jsonl",
                                DecontaminateConfig(benchmarks=[str(work / "gsm8k_test.jsonl")]), progress=False)
    rejected = {r.id for r in read_records(work / "clean.jsonl.rejected.jsonl")}
    flags = [r.id in rejected for r in read_records(work / "data.jsonl")]
    hit = sum(f for f, p in zip(flags, planted) if p)
    false = sum(f for f, p in zip(flags, planted) if not p)
    verbatim_changed = [sum(f for f, r in zip(flags, data) if r["source"] == kind)
                        for kind in ("planted-verbatim", "planted-changed")]
    return {"planted": sum(planted), "flagged": hit, "clean": len(data) - sum(planted), "false_flags": false,
            "verbatim_flagged": verbatim_changed[0], "changed_flagged": verbatim_changed[1],
            "matched_by": summary.details["matched_by"]}


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def throughput(rows: list[dict], work: Path, n_records: int) -> dict:
    from dataforge.quality.decontaminate import DecontaminationOptions, index_for

    bench = [r for r in rows if r["source"] in ("gsm8k/train", "gsm8k/test", "code_alpaca_2k")][:10_000]
    others = [r for r in rows if r["source"] not in ("gsm8k/train", "gsm8k/test", "code_alpaca_2k")]
    _write(work / "bench10k.jsonl", bench)
    stream = [others[k % len(others)] for k in range(n_records)]
    _write(work / "stream.jsonl", stream)
    opts = DecontaminationOptions(benchmarks=[str(work / "bench10k.jsonl")])
    t0 = time.perf_counter()
    idx, _ = index_for(work / "bench10k.jsonl", opts)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index_for(work / "bench10k.jsonl", opts)
    load_s = time.perf_counter() - t0
    matcher = idx.matcher()
    texts = [[f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"], r["output"]] for r in stream]
    t0, c0 = time.perf_counter(), time.process_time()
    found = sum(h is not None for k in range(0, len(texts), 1024) for h in matcher.check(texts[k:k + 1024]))
    lookup_wall, lookup_cpu = time.perf_counter() - t0, time.process_time() - c0

    from dataforge.quality.decontaminate import DecontaminateConfig, run_decontaminate

    c0, w0, t0 = time.process_time(), _children_cpu(), time.perf_counter()
    run_decontaminate(work / "stream.jsonl", work / "split.jsonl", DecontaminateConfig(
        benchmarks=[str(work / "bench10k.jsonl")]), progress=False)
    split = (time.perf_counter() - t0, time.process_time() - c0, _children_cpu() - w0)

    def command(shard: str | None, workers: int | None) -> list[str]:
        out = work / f"out{'-' + shard.replace('/', 'of') if shard else ''}-{workers}.jsonl"
        return [sys.executable, "-m", "dataforge", "decontaminate", str(work / "stream.jsonl"), "-o", str(out),
                "--decontaminate", str(work / "bench10k.jsonl"), *(["--shard", shard] if shard else []),
                *(["--workers", str(workers)] if workers is not None else [])]

    env = {**os.environ, "PYTHONPATH": str(REPO), "DATAFORGE_PROGRESS": "0"}
    runs = {}
    for workers in (0, None):
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        subprocess.run(command(None, workers), check=True, env=env, capture_output=True)
        runs[workers] = (time.perf_counter() - t0, _children_cpu() - cpu0)
    if (work / "out-0.jsonl").read_bytes() != (work / "out-None.jsonl").read_bytes():
        raise SystemExit("the run with workers wrote other records than the run in one process")
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(command(s, 0), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for s in ("1/2", "2/2")]
    if any(p.wait() for p in procs):
        raise SystemExit("a shard run failed")
    two_s, two_cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    return {"items": len(bench), "ngrams": int(sum(len(h) for k, (h, _) in idx.tables.items() if k != "c")),
            "char_windows": int(len(idx.tables.get("c", ([],))[0])), "build_s": build_s, "load_s": load_s,
            "records": n_records, "flagged": found, "lookup_wall_rps": n_records / lookup_wall,
            "lookup_cpu_rps": n_records / lookup_cpu, "command_1proc_rps": n_records / runs[0][0],
            "command_1proc_cpu_rps": n_records / runs[0][1], "command_workers_rps": n_records / runs[None][0],
            "command_workers_cpu_s": runs[None][1], "command_2shards_rps": n_records / two_s,
            "command_2shards_cpu_s": two_cpu, "split": split}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("DATAFORGE_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(Path(args.data) / CORPUS, encoding="utf-8")]
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DATAFORGE_CACHE_DIR"] = str(Path(tmp) / "cache")
        d = detection(rows, Path(tmp))
        print(f"\n1. planted GSM8K test items: {d['flagged']}/{d['planted']} flagged "
              f"({100 * d['flagged'] / d['planted']:.1f}%; verbatim {d['verbatim_flagged']}/25, one word in 20 "
              f"changed {d['changed_flagged']}/25; target >= 98%)")
        print(f"   clean records flagged: {d['false_flags']}/{d['clean']} "
              f"({100 * d['false_flags'] / d['clean']:.2f}%; target < 0.5%); matched by {d['matched_by']}")
        t = throughput(rows, Path(tmp), args.records)
        print(f"\n2. benchmark of {t['items']:,} items: {t['ngrams']:,} word n-grams, {t['char_windows']:,} character "
              f"windows; index built in {t['build_s']:.1f} s, loaded from the cache in {t['load_s']:.2f} s")
        print(f"   {t['records']:,} records ({t['flagged']:,} flagged):")
        print(f"   {'lookup alone, one process':<40}{t['lookup_wall_rps']:>10,.0f} records/s wall "
              f"({t['lookup_cpu_rps']:,.0f} per CPU-second)")
        print(f"   {'dataforge decontaminate --workers 0':<40}{t['command_1proc_rps']:>10,.0f} records/s wall "
              f"({t['command_1proc_cpu_rps']:,.0f} per CPU-second, start-up included)")
        from dataforge.stage.procs import default_processes

        print(f"   {f'dataforge decontaminate ({default_processes()} worker)':<40}{t['command_workers_rps']:>10,.0f} "
              f"records/s wall ({t['command_workers_cpu_s']:.1f} CPU-seconds in all; same output bytes)")
        wall, main_cpu, workers_cpu = t["split"]
        print(f"   {'the same stage called in this process':<40}{t['records'] / wall:>10,.0f} records/s wall; CPU-seconds: "
              f"{main_cpu:.1f} reading and writing here, {workers_cpu:.1f} in the lookup workers (on two free cores "
              f"the wall is bounded by the larger: {t['records'] / max(main_cpu, workers_cpu):,.0f} records/s)")
        print(f"   {'dataforge decontaminate, 2 x --shard':<40}{t['command_2shards_rps']:>10,.0f} records/s wall "
              f"({t['command_2shards_cpu_s']:.1f} CPU-seconds for both; each shard reads the whole input)")
        print("   target: >= 20,000 records/s on 2 cores (quiet machine: about 2 x the per-CPU-second figure)")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
