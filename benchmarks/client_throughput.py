"""Client throughput: how close does the openai backend get to the ideal concurrency / latency?

Starts the loopback OpenAI server as a separate process with a fixed latency per request (default
100 ms), sends N requests through `make_llm(...)` (no cache) at several concurrency levels, and prints
achieved requests/s next to the ideal. Goal: >= 90% of ideal at 32 in flight.

    python benchmarks/client_throughput.py                  # levels 1 8 32 128, ~2 s of ideal time each
    python benchmarks/client_throughput.py --latency 0.05 --seconds 4 --levels 32 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

from dataforge.llm import BackendConfig, GenParams, make_llm


def _cpu_of(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _run_level(base_url: str, concurrency: int, n: int) -> dict:
    llm = make_llm(BackendConfig(backend="openai", base_url=base_url, model="test", no_cache=True,
                                 concurrency=concurrency, timeout=30))
    params = GenParams(max_tokens=64)
    await asyncio.gather(*(llm.complete(f"warm {i}", params) for i in range(concurrency)))  # open the connections
    start, cpu0 = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(llm.complete(f"request {i}", params) for i in range(n)), return_exceptions=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    await llm.aclose()
    errors = sum(isinstance(r, Exception) for r in results)
    return {"concurrency": concurrency, "requests": n, "errors": errors, "wall_s": wall, "achieved_rps": n / wall,
            "client_cpu_ms_per_req": 1000 * cpu / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.1, help="server latency per request, seconds")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--seconds", type=float, default=2.0, help="ideal wall time per level (sets N)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "dataforge.testing.loopback", "--port", str(port),
                               "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "loopback OpenAI server on ..." = listening
        base_url = f"http://127.0.0.1:{port}/v1"
        rows = []
        for c in args.levels:
            ideal = c / args.latency
            n = max(c * 2, int(ideal * args.seconds))
            srv_cpu0 = _cpu_of(server.pid)
            row = asyncio.run(_run_level(base_url, c, n))
            row["server_cpu_ms_per_req"] = 1000 * (_cpu_of(server.pid) - srv_cpu0) / (n + c)
            row.update(ideal_rps=ideal, pct_of_ideal=100 * row["achieved_rps"] / ideal)
            rows.append(row)
            print(f"  concurrency {c:>4}: {row['achieved_rps']:8.1f} req/s of {ideal:8.1f} ideal "
                  f"({row['pct_of_ideal']:5.1f}%)", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(f"\nclient throughput vs ideal (loopback server in its own process, {args.latency * 1000:.0f} ms per request)")
    print(f"{'concurrency':>11} {'requests':>9} {'wall s':>7} {'achieved req/s':>15} {'ideal req/s':>12} "
          f"{'% of ideal':>10} {'errors':>6} {'client CPU ms/req':>17} {'server CPU ms/req':>17}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['requests']:>9} {r['wall_s']:>7.2f} {r['achieved_rps']:>15.1f} "
              f"{r['ideal_rps']:>12.1f} {r['pct_of_ideal']:>9.1f}% {r['errors']:>6} "
              f"{r['client_cpu_ms_per_req']:>17.2f} {r['server_cpu_ms_per_req']:>17.2f}")
    try:
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} CPUs, 1-min load average {load:.1f} while measuring "
              "(CPU time per request bounds the rate when the machine is shared)")
    except OSError:
        pass
    goal = next((r for r in rows if r["concurrency"] == 32), None)
    if goal:
        verdict = "met" if goal["pct_of_ideal"] >= 90 else "NOT met"
        print(f"goal >= 90% of ideal at 32 in flight: {verdict} ({goal['pct_of_ideal']:.1f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
