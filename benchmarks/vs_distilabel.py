"""Race: the same Evol-Instruct job through dataforge and through distilabel's EvolInstruct.

Same seeds, same number of evolutions per seed, an answer for every evolved instruction, the same
OpenAI-compatible loopback server (`python -m dataforge.testing.loopback --latency L`, a separate
process) answering both. distilabel is installed by this script into its own virtual environment
(PyPI; its core needs no torch) and runs as its users run it: a `Pipeline` of `LoadDataFromDicts`
and `EvolInstruct(llm=OpenAILLM(...), generate_answers=True, store_evolutions=True)` with its
default batch size. dataforge runs `dataforge evolve` (no request cache, so every request is sent).
Both wall times include process start-up; the request counts come from the server, which counts the
completion requests it received.

    python benchmarks/vs_distilabel.py --seeds 175 --evolutions 4 --latency 1.0
    python benchmarks/vs_distilabel.py --only dataforge --fail-share 0.2   # show discarded speculation

Where the time goes (L = server latency, N = evolutions, S = seeds). distilabel works through its
default batches of 50 seeds one after another, each batch N rewrite rounds then one answer round:
about ceil(S/50) x (N+1) x L plus its pipeline start-up (~6-10 s). dataforge runs every seed's chain
at once, with no barrier between rounds, and requests a survivor's next-round rewrite while its
answer (needed by the Evol-Instruct elimination rules) is still pending (`--speculate`, default):
about (N+1) x L instead of 2N x L round by round (`--no-speculate`), plus ~2-4 s start-up, as long as
the requests fit in flight (`--concurrency`) and the client keeps up: at L=0 the 1,400 requests
alone cost dataforge's client ~4 s of CPU on this 2-core machine, and a busy machine stretches that.
A rewrite requested for a child whose answer then fails elimination is thrown away; the table lists
those requests separately (none with the server's default replies, which all pass elimination).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "pipelines" / "data" / "self_instruct_seed_tasks.jsonl"

DISTILABEL_JOB = textwrap.dedent("""\
    import json, sys, time
    t0 = time.perf_counter()
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import EvolInstruct

    base_url, seeds_path, n_evol, out_path, max_tokens = sys.argv[1:6]
    data = [{"instruction": json.loads(line)["instruction"]} for line in open(seeds_path) if line.strip()]
    with Pipeline(name="evol-race") as pipeline:
        load = LoadDataFromDicts(data=data)
        evol = EvolInstruct(
            llm=OpenAILLM(model="test", base_url=base_url, api_key="loopback",
                          generation_kwargs={"max_new_tokens": int(max_tokens), "temperature": 0.7}),
            num_evolutions=int(n_evol), store_evolutions=True, generate_answers=True)
        load >> evol
    distiset = pipeline.run(use_cache=False)
    rows = distiset["default"]["train"]
    evolved = sum(len(r["evolved_instructions"]) for r in rows)
    answers = sum(len(r["answers"]) for r in rows)
    json.dump({"rows": len(rows), "evolved": evolved, "answers": answers,
               "seconds_in_process": time.perf_counter() - t0}, open(out_path, "w"))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distilabel(venv: Path) -> Path:
    py = venv / "bin" / "python"
    probe = "from distilabel.models import OpenAILLM; from distilabel.steps.tasks import EvolInstruct"
    if py.exists() and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0:
        return py
    print(f"installing distilabel[openai] into {venv} (PyPI) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # distilabel 1.5 imports `requests` without declaring it
    subprocess.run([py, "-m", "pip", "install", "-q", "distilabel[openai]", "requests"], check=True)
    has_torch = subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0
    if has_torch:
        print("note: torch got installed into the distilabel venv (not needed by the race)")
    return py


# The loopback server in its own process (no CPU shared with the racers' event loops), counting the
# completion requests it received: the equal-work check comes from the server, not from either tool.
# With a fail share, that share of answer requests (no system message, not distilabel's rewrite
# prompt; picked by a hash of the text, so the same for both tools) gets an apology, which dataforge's
# elimination rejects: the parent is evolved again next round, and the speculative rewrite of the
# rejected child is thrown away. distilabel keeps every answer; its work is unchanged.
SERVER_JOB = textwrap.dedent("""\
    import hashlib, json, signal, sys
    from dataforge.testing.loopback import LoopbackServer, default_responder
    fail_share = float(sys.argv[3])
    def responder(body):
        msgs = body.get("messages") or []
        text = msgs[-1]["content"] if msgs else body.get("prompt", "")
        rewrite = any(m.get("role") == "system" for m in msgs) or "#Rewritten Prompt#" in text
        h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") / 2 ** 32
        if not rewrite and h < fail_share:
            return "Sorry, I cannot do that."
        return [default_responder(body, i) for i in range(int(body.get("n") or 1))]
    srv = LoopbackServer(responder, latency=float(sys.argv[2]), port=int(sys.argv[1]))
    def stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    print(json.dumps({"requests": len(srv.requests), "max_in_flight": srv.max_in_flight}), flush=True)
""")


class Server:
    """The loopback server as a separate process; `stop()` returns the requests it received."""

    def __init__(self, latency: float, fail_share: float = 0.0):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_JOB, str(self.port), str(latency), str(fail_share)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.base_url + "/models", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("loopback server did not start")

    def stop(self) -> dict:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {"requests": None, "max_in_flight": None}


def run_distilabel(py: Path, base_url: str, seeds: Path, n_evol: int, max_tokens: int, work: Path) -> dict:
    script = work / "distilabel_job.py"
    script.write_text(DISTILABEL_JOB)
    out = work / "distilabel_result.json"
    env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_BASE_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.run([py, str(script), base_url, str(seeds), str(n_evol), str(out), str(max_tokens)],
                          capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"distilabel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    return {"wall": wall, "texts": res["evolved"] + res["answers"], **res}


def run_dataforge(base_url: str, seeds: Path, n_evol: int, max_tokens: int, concurrency: int, work: Path,
                  speculate: bool = True) -> dict:
    out = work / "dataforge_evolved.jsonl"
    cmd = [sys.executable, "-m", "dataforge", "evolve", str(seeds), "-o", str(out), "--base-url", base_url,
           "--model", "test", "--rounds", str(n_evol), "--no-cache", "--concurrency", str(concurrency),
           "--evolve-max-tokens", str(max_tokens), "--answer-max-tokens", str(max_tokens), "--keep-failed",
           "--json", "--speculate" if speculate else "--no-speculate", *DATAFORGE_EQUAL_WORK_FLAGS]
    env = {**os.environ, "DATAFORGE_PROGRESS": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dataforge failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    summary = json.loads(proc.stdout)
    evolved = sum(1 for r in records if (r.get("lineage") or {}).get("generator") == "evolve")
    answers = sum(1 for r in records if r.get("output"))
    spec = summary["details"].get("speculative_discarded") or {}
    return {"wall": wall, "rows": len(records), "evolved": evolved, "answers": answers,
            "client_requests": summary["tokens"]["requests"], "discarded": spec.get("requests", 0),
            "kept": summary["out"].get("pending", 0)}


# dataforge's own extra work beyond distilabel's (the model judge of elimination rule 1) is switched
# off, and so is its request-free shortcut (attaching a library constraint without asking the model),
# so both send the same requests: one rewrite and one answer per evolution per seed. Failed evolutions
# are kept (--keep-failed) so both write every evolution.
DATAFORGE_EQUAL_WORK_FLAGS: list[str] = ["--judge", "off", "--verifiable-share", "0"]


def subset(seeds: Path, n: int, work: Path) -> Path:
    lines = [line for line in seeds.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    p = work / f"seeds_{n}.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=175, help="how many of the 175 Self-Instruct seeds")
    ap.add_argument("--evolutions", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.5, help="seconds the server takes per request")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=256, help="dataforge requests in flight")
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "distilabel-venv")
    ap.add_argument("--only", choices=("dataforge", "distilabel"), default=None)
    ap.add_argument("--fail-share", type=float, default=0.0,
                    help="share of answers the server makes fail elimination (apologies), to show discarded work")
    ap.add_argument("--no-speculate", action="store_true",
                    help="run dataforge round by round (no speculative next-round rewrites), for comparison")
    args = ap.parse_args()

    py = ensure_distilabel(args.venv) if args.only != "dataforge" else None
    with tempfile.TemporaryDirectory(prefix="vs-distilabel-") as tmp:
        work = Path(tmp)
        seeds = subset(SEEDS, args.seeds, work)
        results = {}
        for name in ("dataforge", "distilabel"):
            if args.only and args.only != name:
                continue
            srv = Server(args.latency, args.fail_share)  # a fresh server per tool: nothing shared but the code
            try:
                if name == "dataforge":
                    results[name] = run_dataforge(srv.base_url, seeds, args.evolutions, args.max_tokens,
                                                  args.concurrency, work, speculate=not args.no_speculate)
                else:
                    results[name] = run_distilabel(py, srv.base_url, seeds, args.evolutions, args.max_tokens, work)
            finally:
                served = srv.stop()
            results[name].update(requests=served["requests"], peak=served["max_in_flight"])
    print(f"\nEvol-Instruct race: {args.seeds} seeds x {args.evolutions} evolutions, answers on, "
          f"loopback latency {args.latency}s/request, max_tokens {args.max_tokens}, "
          f"answers made to fail: {args.fail_share:.0%}")
    print(f"dataforge evolve --concurrency {args.concurrency} {' '.join(DATAFORGE_EQUAL_WORK_FLAGS)} "
          f"{'--no-speculate' if args.no_speculate else '--speculate'}; distilabel "
          f"Pipeline(LoadDataFromDicts >> EvolInstruct) with its default batch size; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print("requests = completion requests the server received; of them, 'discarded' = dataforge's speculative "
          "rewrites thrown away because the parent's answer failed elimination")
    print(f"{'tool':<12}{'wall s':>10}{'requests':>10}{'discarded':>10}{'evolved':>10}{'answers':>10}{'peak':>8}")
    for name, r in results.items():
        print(f"{name:<12}{r['wall']:>10.2f}{r['requests']:>10}{r.get('discarded', 0):>10}{r['evolved']:>10}"
              f"{r['answers']:>10}{r['peak']:>8}")
    if len(results) == 2:
        ratio = results["distilabel"]["wall"] / results["dataforge"]["wall"]
        print(f"dataforge is {ratio:.2f}x faster (goal: >= 3x)")


if __name__ == "__main__":
    main()
