"""Survival rate per Evol-Instruct operation on real seeds (the few-shot prompts' tuning figure).

Runs one round of each operation alone over the first N seed records and prints, per operation, how
many evolutions survived the paper's four elimination rules, why the others died, and the speed.
Model-written constraints are measured (verifiable_share=0): library constraints always survive.

    python benchmarks/evolve_survival.py                       # embedded SmolLM2-135M, 16 bundled seeds
    python benchmarks/evolve_survival.py --base-url http://localhost:8000/v1 --n 50
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from itertools import islice
from pathlib import Path

from dataforge.generate.evolve import OPERATIONS, EvolveConfig, run_evolve
from dataforge.io import read_records, write_records
from dataforge.llm import BackendConfig, make_llm
from dataforge.paths import resource_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default=str(resource_dir("examples") / "seeds.jsonl"))
    ap.add_argument("--n", type=int, default=16, help="seed records to evolve per operation")
    ap.add_argument("--skip", type=int, default=0, help="start after this many seed records")
    ap.add_argument("--ops", default=",".join(OPERATIONS))
    ap.add_argument("--answer-max-tokens", type=int, default=64)
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default=None, help="request cache (default: the user cache)")
    ap.add_argument("--show", action="store_true", help="print every evolved instruction")
    args = ap.parse_args()

    overrides = {"cache_path": args.cache} if args.cache else {}
    if args.base_url:
        overrides.update(backend="openai", base_url=args.base_url, model=args.model)
    llm = make_llm(BackendConfig.from_env(**overrides))
    work = Path(tempfile.mkdtemp(prefix="evolve-survival-"))
    seeds = work / "seeds.jsonl"
    write_records(seeds, islice(read_records(args.seeds), args.skip, args.skip + args.n))
    print(f"model {llm.model_id} (profile {llm.profile}), {args.n} seed records of {args.seeds} "
          f"(after {args.skip}), one round per operation")
    print(f"{'operation':<20}{'tried':>6}{'kept':>6}{'rate':>7}{'sec':>8}  eliminated")
    total_t = total_k = 0
    for op in args.ops.split(","):
        out = work / f"{op}.jsonl"
        t = time.time()
        cfg = EvolveConfig(rounds=1, ops=[op], verifiable_share=0.0, keep_failed=True,
                           answer_max_tokens=args.answer_max_tokens)
        s = run_evolve(seeds, out, cfg, llm=llm, progress=False)
        o = s.details["operations"][op]
        total_t += o["tried"]
        total_k += o["survived"]
        print(f"{op:<20}{o['tried']:>6}{o['survived']:>6}{o['survival_rate']:>7.0%}{time.time() - t:>8.1f}  "
              f"{json.dumps(s.details['eliminated'])}", flush=True)
        if args.show:
            for r in read_records(out):
                print(f"    {r.status[:3]} {r.reasons} {r.instruction[:140]!r}")
    print(f"{'all':<20}{total_t:>6}{total_k:>6}{total_k / max(total_t, 1):>7.0%}")
    print("measured on this machine; rates depend on the model and on the seeds")


if __name__ == "__main__":
    main()
