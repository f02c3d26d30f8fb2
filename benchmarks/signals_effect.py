"""What the correctness signals catch: one evolved file through the quality gate twice, in one process,
with the signals off (the gate as it was) and on, side by side.

    dataforge evolve examples/seeds.jsonl -o evolved.jsonl          # the quickstart (embedded model)
    python benchmarks/signals_effect.py evolved.jsonl [--base-url URL --model NAME] [--examples 5]

Prints accepted / review / rejected for both runs, which signals turned accepted records into review
(with the reason), and who judged the accepted records (meta.gate.judged_by). With the embedded model
there is no capable judge: self-consistency runs with it (k samples), reference answers, arithmetic and
execution need no model at all.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

OFF = {"signals": {"reference_answer": False, "arithmetic": False, "execution": {"enabled": False},
                   "consistency": {"enabled": "off"}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--examples", type=int, default=5)
    args = ap.parse_args()

    import yaml

    from dataforge.io import read_records
    from dataforge.quality.gate import FilterConfig, run_filter

    backend = {k: v for k, v in {"base_url": args.base_url, "model": args.model}.items() if v}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="signals-") as tmp:
        off_cfg = Path(tmp) / "off.yaml"
        off_cfg.write_text(yaml.safe_dump(OFF))
        for name, config in (("signals off", str(off_cfg)), ("signals on", None)):
            out = Path(tmp) / f"{name.split()[1]}.jsonl"
            t0 = time.perf_counter()
            summary = run_filter(args.input, out, FilterConfig(config=config, single_file=True),
                                 backend=backend or None, progress=False).to_dict()
            runs[name] = {"summary": summary, "seconds": time.perf_counter() - t0,
                          "records": {r.id: r for r in read_records(out)}}
    off, on = runs["signals off"], runs["signals on"]
    print(f"{'':28}{'signals off':>14}{'signals on':>14}")
    for status in ("accepted", "review", "rejected"):
        print(f"{status:28}{off['summary']['out'].get(status, 0):>14}{on['summary']['out'].get(status, 0):>14}")
    print(f"{'seconds':28}{off['seconds']:>14.1f}{on['seconds']:>14.1f}")
    correctness = on["summary"]["details"]["correctness"]
    print("accepted records judged by:", json.dumps(correctness["accepted_judged_by"]))
    if correctness["note"]:
        print("note:", correctness["note"])
    caught = [(rid, r) for rid, r in on["records"].items()
              if off["records"][rid].status == "accepted" and r.status != "accepted"]
    signals = ("reference_answer", "arithmetic", "execution", "consistency")
    print(f"\nnow caught: {len(caught)} record(s) accepted without the signals")
    for rid, r in caught[: args.examples]:
        why = [x for x in r.reasons if x.split(":", 1)[0] in signals] or r.reasons
        print(f"- {r.instruction[:110]!r}\n  -> {r.output[:160]!r}\n  {r.status}: {'; '.join(why)}")
    ran = {s: sum(1 for r in on["records"].values() if s in r.scores) for s in signals}
    print("\nrecords each signal applied to:", json.dumps(ran))


if __name__ == "__main__":
    main()
