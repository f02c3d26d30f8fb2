"""Run by tests/test_vllm_cpu.py with .venv-vllm's Python: dataforge's in-process `vllm` backend on CPU
(chat, evolve, filter with judges, structured output). Prints one JSON object of results.
The `__main__` guard is required: vLLM spawns worker processes that re-import this file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(model_dir: str, work: str, seeds: str) -> dict:
    from dataforge.generate.elimination import EliminationConfig
    from dataforge.generate.evolve import EvolveConfig, run_evolve
    from dataforge.io import read_records
    from dataforge.llm import BackendConfig, GenParams, make_llm, run_sync
    from dataforge.llm.structured import generate_structured
    from dataforge.quality.gate import FilterConfig, run_filter
    from dataforge.quality.judges import Verdict

    out: dict = {"timings": {}}
    t = time.perf_counter()
    llm = make_llm(BackendConfig(backend="vllm", model=model_dir, no_cache=True, n_ctx=2048, seed=0))
    out["profile"] = llm.profile_decision.as_dict()
    comp = run_sync(llm.chat([{"role": "user", "content": "Name one colour."}], GenParams(temperature=0, max_tokens=12)))
    out["timings"]["load_and_first_chat_s"] = round(time.perf_counter() - t, 1)
    out["chat"] = {"text": comp.text, "completion_tokens": comp.usage.completion_tokens, "model": llm.model_id}

    t = time.perf_counter()
    res = run_sync(generate_structured(llm, [{"role": "user", "content": "Is the sky blue on a clear day? "
                                              "Reply in JSON with verdict and reason."}], Verdict,
                                       GenParams(temperature=0, max_tokens=64)))
    out["structured"] = {"ok": res.ok, "value": res.value.model_dump() if res.ok else None, "attempts": res.attempts}
    out["timings"]["structured_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    evo = Path(work) / "evo.jsonl"
    s = run_evolve(seeds, evo, EvolveConfig(rounds=1, keep_failed=True, evolve_max_tokens=48, answer_max_tokens=48,
                                            elimination=EliminationConfig(judge="embedding")), llm=llm, progress=False)
    recs = list(read_records(evo))
    out["evolve"] = {"evolved": s.details["rounds"]["1"]["evolved"], "records": len(recs), "errors": s.tokens.failed,
                     "models": sorted({r.lineage.model for r in recs})}
    out["timings"]["evolve_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    src = Path(work) / "judge_in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name the capital of France.", "output": "The capital of France is Paris."},
        {"instruction": "Translate 'thank you' into Spanish.", "output": "The Eiffel Tower is in Paris."}]))
    clean = Path(work) / "clean.jsonl"
    fs = run_filter(src, clean, FilterConfig(judges="on", refine_rounds=0, dedup=False), llm=llm, progress=False)
    decided = [r for p in (clean, Path(f"{clean}.review.jsonl"), Path(f"{clean}.rejected.jsonl"))
               if p.exists() and p.stat().st_size for r in read_records(p)]
    out["filter"] = {"status": fs.out, "judges": fs.details["judges"],
                     "alignment": [r.scores.get("alignment") for r in decided],
                     "unjudged": [x for r in decided for x in r.reasons if x.endswith(":unjudged")]}
    out["timings"]["filter_s"] = round(time.perf_counter() - t, 1)
    run_sync(llm.aclose())
    return out


if __name__ == "__main__":
    result = main(*sys.argv[1:4])
    print("RESULT " + json.dumps(result), flush=True)
