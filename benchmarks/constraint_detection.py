"""Recall and precision of constraint detection per type on the labelled set
(tests/data/constraint_instructions.jsonl), split by split: the parser alone, and (with --loopback)
model-based extraction through the gate's extraction path against the loopback server scripted to
answer from the labels, merged with the parser.

    python benchmarks/constraint_detection.py [--loopback] [--errors]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataforge.quality.constraint_parser import parse_constraints  # noqa: E402
from dataforge.quality.constraint_scoring import Score, load_labelled, score_detector  # noqa: E402

SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "constraint_instructions.jsonl"
SPLITS = {"dev": "dev (tuned on)", "held_out": "held-out 1 (written before the parser)",
          "held_out_2": "held-out 2 (written after tuning)"}


def table(title: str, scores: dict[str, Score]) -> None:
    print(f"\n{title}")
    cols = list(scores)
    print(f"| type | " + " | ".join(f"{c} R | {c} P" for c in cols) + " |")
    print("|---|" + "---|---|" * len(cols))
    types = sorted({t for s in scores.values() for t in s.types()})
    for t in types:
        cells = []
        for c in cols:
            s = scores[c]
            n = s.tp[t] + s.fn[t]
            cells.append(f"{s.recall(t):.0%} ({s.tp[t]}/{n}) | {s.precision(t):.0%} (fp {s.fp[t]})")
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("| **all** | " + " | ".join(f"**{scores[c].recall():.1%}** | **{scores[c].precision():.1%}**"
                                      for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loopback", action="store_true", help="also measure model extraction via the loopback server")
    ap.add_argument("--errors", action="store_true", help="list every miss and false detection")
    args = ap.parse_args()
    rows = load_labelled(SET)
    print(f"{len(rows)} instructions, {sum(len(r['constraints']) for r in rows)} labelled constraints, "
          f"{sum(1 for r in rows if not r['constraints'])} without any")
    t0 = time.perf_counter()
    parser_scores = {name: score_detector([r for r in rows if r["split"] == name], parse_constraints) for name in SPLITS}
    dt = time.perf_counter() - t0
    print(f"parser: {len(rows) / dt:.0f} instructions/s")
    table("Parser alone", parser_scores)
    if args.errors:
        for name, s in parser_scores.items():
            for e in s.errors:
                print(name, e)
    if args.loopback:
        model, merged, seconds = run_loopback(rows)
        print(f"\nmodel extraction over the loopback server: {len(rows) / seconds:.0f} instructions/s")
        table("Model extraction, loopback scripted from the labels (proves the plumbing only)", model)
        table("Union of parser and model extraction", merged)


def run_loopback(rows: list[dict]) -> tuple[dict[str, Score], dict[str, Score], float]:
    """Every instruction through ConstraintExtractor -> OpenAI client -> HTTP -> the labels responder,
    then merged with the parser: scores per split for the model alone and for the union."""
    from dataforge.llm import BackendConfig, make_llm, run_sync
    from dataforge.quality.constraint_extraction import ConstraintExtractor, merge
    from dataforge.testing.label_responder import labels_responder
    from dataforge.testing.loopback import LoopbackServer

    model = {name: Score() for name in SPLITS}
    merged = {name: Score() for name in SPLITS}
    t0 = time.perf_counter()
    with LoopbackServer(labels_responder(rows)) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="judge", no_cache=True))
        ex = ConstraintExtractor(llm)

        async def all_rows():
            import asyncio

            return await asyncio.gather(*(ex.extract(r["instruction"]) for r in rows))

        results = run_sync(all_rows())
        run_sync(llm.aclose())
    seconds = time.perf_counter() - t0
    if ex.failures:
        print("extraction failures:", ex.failures)
    for r, res in zip(rows, results):
        gold = [tuple(c) for c in r["constraints"]]
        model[r["split"]].add(gold, res.specs or [], r["id"])
        merged[r["split"]].add(gold, merge(parse_constraints(r["instruction"]), res.specs)[0], r["id"])
    return model, merged, seconds


if __name__ == "__main__":
    main()
