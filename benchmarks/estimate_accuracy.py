"""How close is `evolve --dry-run` to what the whole job then uses?

Both run against the project's loopback OpenAI-compatible server (its own model: plausible text from a
hash of the prompt; the information-gain judge falls back to the MiniLM embedder as it does for any
model without a readable verdict), on the 25 bundled seed tasks, 4 rounds, with a fixed latency per
request (2 s by default, about what a hosted API takes for these answers). First `dataforge evolve --dry-run` (a sample of 4 records, 1 round), then the whole job with a
fresh request cache (so none of the sample's answers are reused), and the figures side by side.

    python benchmarks/estimate_accuracy.py [--rounds 4] [--latency 2.0] [--concurrency 8]
                                           [--price-in 0.15 --price-out 0.60]

Quote the figures with the machine's load (printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _run(args: list[str], env: dict[str, str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dataforge", *args, "--json"], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout), time.perf_counter() - t0


def main() -> None:
    from dataforge.testing.loopback import LoopbackServer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--latency", type=float, default=2.0, help="seconds per request, like a hosted API")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--price-in", type=float, default=0.15)
    ap.add_argument("--price-out", type=float, default=0.60)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    seeds = REPO / "examples" / "seeds.jsonl"
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer(latency=args.latency, models=("gpt-4o-mini",)) as srv:
        env = {**os.environ, "PYTHONPATH": str(REPO), "DATAFORGE_PROGRESS": "0", "DATAFORGE_CACHE_DIR": tmp}
        common = ["evolve", str(seeds), "-o", f"{tmp}/evolved.jsonl", "--rounds", str(args.rounds), "--base-url",
                  srv.base_url, "--model", "gpt-4o-mini", "--concurrency", str(args.concurrency),
                  "--price-in", str(args.price_in), "--price-out", str(args.price_out)]
        est, est_wall = _run([*common, "--cache", f"{tmp}/dry.sqlite", "--dry-run"], env)
        full, full_wall = _run([*common, "--cache", f"{tmp}/fresh.sqlite"], env)
    p, t = est["projected"], full["tokens"]
    rows = [("requests", p["requests"], t["requests"]), ("prompt tokens", p["prompt_tokens"], t["prompt"]),
            ("completion tokens", p["completion_tokens"], t["completion"]), ("total tokens", p["total_tokens"],
                                                                               t["total"]),
            ("cost ($)", p["cost_usd"], full["cost_usd"])]
    s = est["sample"]
    print(f"\nevolve, {est['input_records']} seed tasks x {args.rounds} rounds, loopback latency {args.latency} s, "
          f"concurrency {args.concurrency}, prices ${args.price_in}/${args.price_out} per M")
    print(f"dry run: {s['how']}: {s['requests']} requests in {est_wall:.1f} s (x{est['scale']:.2f} to the whole job)")
    print(f"\n{'':<20}{'projected':>14}{'whole job':>14}{'difference':>12}")
    for name, projected, used in rows:
        diff = 100 * (projected - used) / used if used else float("nan")
        fmt = "{:>14,.4f}" if isinstance(projected, float) else "{:>14,}"
        print(f"{name:<20}{fmt.format(projected)}{fmt.format(used)}{diff:>+11.1f}%")
    wall = full["wall_s"]
    print(f"{'wall time (s)':<20}{p['wall_s'] or 0:>14,.1f}{wall:>14,.1f}"
          f"{100 * ((p['wall_s'] or 0) - wall) / wall:>+11.1f}%  (projected: requests x median time per request"
          f" / {est['parallel']} in flight; the run: everything, start-up and local work included)")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
