"""Does `dataforge convert` stream? Peak memory must stay flat while the input grows.

Runs the real command in a subprocess on 1/10 of the shared corpus, the whole corpus (24,940 records)
and the corpus repeated 4 times, samples the process's resident memory (RSS) every 5 ms with psutil, and
prints peak RSS next to the input size and the throughput. A reader that loaded the file would grow its
peak with the input; a streaming one stays at the interpreter's own footprint.

    python benchmarks/convert_memory.py [--corpus PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = Path(os.environ.get("DATAFORGE_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "instruct_corpus_shared.jsonl"


def peak_rss(cmd: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MiB over the process tree, wall seconds, stdout) of one command."""
    env = {**os.environ, "DATAFORGE_PROGRESS": "0"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.005)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return peak / 2**20, wall, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args()
    if not args.corpus.exists():
        raise SystemExit(f"{args.corpus}: not found (set DATAFORGE_SHARED_DATA or pass --corpus)")
    import json

    lines = args.corpus.read_bytes().splitlines(keepends=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = {"1/10 of corpus": tmp / "tenth.jsonl", "whole corpus": args.corpus, "corpus x4": tmp / "x4.jsonl"}
        inputs["1/10 of corpus"].write_bytes(b"".join(lines[: len(lines) // 10]))
        inputs["corpus x4"].write_bytes(b"".join(lines) * 4)
        del lines
        dataforge = [sys.executable, "-m", "dataforge"]
        base_mb, _, _ = peak_rss([*dataforge, "convert", "--help"])
        rows = []
        for label, path in inputs.items():
            mb, wall, out = peak_rss([*dataforge, "convert", str(path), "-o", str(tmp / "out.jsonl"), "--json"])
            summary = json.loads(out)
            rows.append((label, path.stat().st_size / 2**20, summary["records_out"], wall,
                         summary["records_per_s"], mb))
    print(f"dataforge convert on {args.corpus.name}: peak RSS of the whole process tree, sampled every 5 ms")
    print(f"baseline (interpreter + CLI imports, `convert --help`): {base_mb:.0f} MiB\n")
    print(f"{'input':<16}{'size MiB':>10}{'records':>10}{'wall s':>9}{'rec/s (in-proc)':>17}{'peak RSS MiB':>14}"
          f"{'RSS / input':>13}")
    for label, size, n, wall, rate, mb in rows:
        print(f"{label:<16}{size:>10.1f}{n:>10,}{wall:>9.2f}{rate:>17,.0f}{mb:>14.0f}{mb / size:>12.1f}x")
    small, big = rows[0], rows[-1]
    print(f"\ninput grew {big[1] / small[1]:.0f}x, peak RSS grew {big[5] / small[5]:.2f}x "
          f"({big[5] - small[5]:+.0f} MiB): memory is flat, not proportional to the input.")


if __name__ == "__main__":
    main()
