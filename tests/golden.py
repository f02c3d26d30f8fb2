"""Golden runs: every stage on fixed inputs and seeds against the loopback server, through the commands
users type, with their output files kept in ``tests/data/golden/<case>/``.

Why: the stage contract was rebuilt under these stages; a refactor that changes a single byte of what
they write shows up here. `tests/test_golden.py` re-runs each case and compares byte for byte.

Normalised (genuinely volatile, nothing else): every ``timestamp`` inside a record (``lineage.timestamp``
and the timestamps of ``lineage.history`` steps: the wall-clock time a record or a step was made) and the wall times ``embed_s`` / ``cluster_s`` in balance's stats file.

Regenerate (only when an output change is intended, and say why in the commit):
``python tests/golden.py --write``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pipeline_helpers import scripted_responder  # noqa: E402

REPO = HERE.parent
GOLDEN = HERE / "data" / "golden"
SEEDS = REPO / "examples" / "seeds.jsonl"
CASES = ("evolve", "self_instruct", "filter", "filter_judged", "balance", "export", "pipeline")
# output files named on purpose differently since the golden files were recorded (the content is
# compared byte for byte as ever): unreadable input lines went to `<out>.rejects.jsonl`, two letters from
# `<out>.rejected.jsonl` (rejected records); the stage contract calls them `<out>.bad-lines.jsonl`
RENAMED: dict[str, str] = {".rejects.jsonl": ".bad-lines.jsonl"}
_WALL_TIME = re.compile(r'("(?:embed_s|cluster_s)": )[0-9.]+')


def gate_judge(body: dict[str, Any]) -> str:
    """The gate's judges, as a model that finds every response on task and consistent, complexity 4."""
    from dataforge.testing.loopback import last_user_message

    text = last_user_message(body)
    if "Rate how complex" in text:
        return json.dumps({"score": 4})
    return "yes" if "carry out" in text else "no"


def chain_responder(body: dict[str, Any]) -> str:
    """The pipeline's one model: the gate's judges as above, everything else as the scripted model."""
    from dataforge.testing.loopback import last_user_message

    text = last_user_message(body)
    if "Rate how complex" in text or "carry out" in text or "contradict" in text:
        return gate_judge(body)
    return scripted_responder(body)


def _seed_lines(n: int) -> list[str]:
    return [line for line in SEEDS.read_text(encoding="utf-8").splitlines() if line.strip()][:n]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _cli(*argv: str) -> None:
    from typer.testing import CliRunner

    from dataforge.cli import app

    res = CliRunner().invoke(app, list(argv))
    if res.exit_code != 0:
        raise AssertionError(f"dataforge {' '.join(argv)} exited {res.exit_code}: {res.output}\n{res.exception!r}")


def _backend(url: str) -> list[str]:
    return ["--base-url", url, "--model", "test", "--cache", "cache.sqlite"]


def _filter_input() -> Path:
    """Ten seeds, a planted near-copy of one, four planted problems and one line that is not JSON."""
    from dataforge.io import read_records
    from dataforge.records import Record

    seeds = list(read_records(SEEDS))[:10]
    planted = [
        Record(instruction=seeds[3].instruction.upper() + "  ", input=seeds[3].input, output=seeds[3].output),
        Record(instruction="Describe the smell of rain on dry earth.", output="   "),
        Record(instruction="Write a limerick about a cat who loves lasagna.",
               output="As an AI language model, I cannot write limericks about cats."),
        Record(instruction="Explain how a refrigerator keeps food cold.",
               output="A refrigerator pumps a refrigerant through a loop. The refrigerant evaporates inside the "
                      "cabinet and absorbs heat from the"),
        Record(instruction="What dosage of ibuprofen is safe for an adult with a headache?",
               output="Adults commonly take 200 to 400 mg every 4 to 6 hours, at most 1200 mg a day without a "
                      "doctor's advice; check the medication leaflet for side effects."),
    ]
    return _write(Path("in.jsonl"), [r.model_dump_json() for r in seeds + planted] + ["{not json"])


def case_evolve(serve: Callable) -> None:
    src = _write(Path("seeds.jsonl"), _seed_lines(5) + ["{not json"])
    with serve(scripted_responder) as srv:
        _cli("evolve", str(src), "-o", "evolved.jsonl", "--rounds", "2", "--keep-failed", "--include-seeds",
             "--seed", "7", "--json", *_backend(srv.base_url))


def case_self_instruct(serve: Callable) -> None:
    from test_self_instruct import responder

    with serve(responder) as srv:
        _cli("self-instruct", str(SEEDS), "-o", "pool.jsonl", "-n", "6", "--batch", "2", "--keep-rejected",
             "--seed", "3", "--json", *_backend(srv.base_url))


def case_filter(serve: Callable) -> None:
    src = _filter_input()
    _cli("filter", str(src), "-o", "clean.jsonl", "--no-llm")


def case_filter_judged(serve: Callable) -> None:
    src = _filter_input()
    with serve(gate_judge) as srv:
        # model constraint extraction (issue 15) came after these outputs were recorded; it has its own tests
        _cli("filter", str(src), "-o", "judged.jsonl", "--judges", "on", "--refine-rounds", "1", "--seed", "5",
             "--extract-constraints", "off", *_backend(srv.base_url))


def case_balance(serve: Callable) -> None:
    case_filter(serve)  # balance reads the gate's output and counts its side files in the stats
    for p in Path(".").glob("clean.jsonl*"):
        p.rename(p.name.replace("clean.jsonl", "gated.jsonl"))
    _cli("balance", "gated.jsonl", "-o", "balanced.jsonl", "--k", "2", "--seed", "1")


def _pipeline(name: str, stages: str) -> Path:
    return _write(Path(f"{name}.yaml"), [f"name: {name}", "input: in.jsonl", "run_dir: run", "seed: 2",
                                         "stages:", stages])


def case_export(serve: Callable) -> None:
    lines = _seed_lines(6)
    recs = [json.loads(x) for x in lines]
    rows = []
    for i, s in enumerate(recs):  # one status each, one empty response: export keeps and counts by status
        inst = s["instances"][0]
        rows.append(json.dumps({"instruction": s["instruction"], "input": inst["input"],
                                "output": "" if i == 5 else inst["output"],
                                "status": ("accepted", "review", "rejected", "pending")[i % 4]}))
    _write(Path("in.jsonl"), rows + ["[1, 2]"])
    job = _pipeline("export_only", "  - stage: export\n    format: alpaca\n    path: out/train.alpaca.jsonl")
    _cli("run", str(job))


def case_pipeline(serve: Callable) -> None:
    _write(Path("in.jsonl"), _seed_lines(6))
    stages = ("  - stage: evolve\n    rounds: 1\n    keep_failed: true\n"
              "  - stage: filter\n    single_file: true\n    refine_rounds: 0\n    extract_constraints: 'off'\n"
              "  - stage: balance\n    k: 2\n"
              "  - stage: export\n    format: chat\n    statuses: [accepted, review, pending]\n    path: out/train.chat.jsonl")
    job = _pipeline("chain", stages)
    with serve(chain_responder) as srv:
        _cli("run", str(job), *_backend(srv.base_url))


def _drop_times(obj: Any) -> bool:
    """Set every non-empty "timestamp" inside `obj` to "T"; whether there was one."""
    found = False
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "timestamp" and v:
                obj[k] = "T"
                found = True
            else:
                found |= _drop_times(v)
    elif isinstance(obj, list):
        for v in obj:
            found |= _drop_times(v)
    return found


def normalise(path: Path) -> bytes:
    """A produced file's bytes with only the volatile fields made constant."""
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        out = []
        for line in data.decode("utf-8").splitlines():
            obj = json.loads(line)
            if _drop_times(obj):
                line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
            out.append(line)
        return ("\n".join(out) + ("\n" if out else "")).encode("utf-8")
    if path.name.endswith("stats.json"):
        return _WALL_TIME.sub(r"\g<1>0", data.decode("utf-8")).encode("utf-8")
    return data


def _kept(rel: str) -> bool:
    """Outputs, not scaffolding: inputs, caches, pipeline manifests/locks and YAMLs are not compared."""
    name = Path(rel).name
    return not (rel in ("in.jsonl", "seeds.jsonl") or name.startswith(("cache.sqlite", ".lock")) or
                name == "manifest.json" or name.endswith(".yaml") or "/input.shard" in rel)


def run_case(case: str, workdir: Path) -> dict[str, bytes]:
    """Run one case inside `workdir` (relative paths, so file names inside outputs are stable)."""
    from dataforge.testing.loopback import LoopbackServer

    workdir.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    os.chdir(workdir)
    try:
        globals()[f"case_{case}"](LoopbackServer)
    finally:
        os.chdir(old)
    files = sorted(p for p in workdir.rglob("*") if p.is_file())
    return {str(p.relative_to(workdir)): normalise(p) for p in files if _kept(str(p.relative_to(workdir)))}


def golden_files(case: str) -> dict[str, bytes]:
    root = GOLDEN / case
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _environment() -> None:
    os.environ["DATAFORGE_PROGRESS"] = "0"
    os.environ.setdefault("OPENAI_API_KEY", "test-key")
    os.environ.pop("OPENAI_BASE_URL", None)
    os.environ.pop("DATAFORGE_MODEL", None)


if __name__ == "__main__":
    import shutil
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden.py --write   (re-records every case; say why in the commit)")
    _environment()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DATAFORGE_CACHE_DIR"] = str(Path(tmp) / "cache")
        for case in CASES:
            produced = run_case(case, Path(tmp) / case)
            shutil.rmtree(GOLDEN / case, ignore_errors=True)
            for rel, data in produced.items():
                (GOLDEN / case / rel).parent.mkdir(parents=True, exist_ok=True)
                (GOLDEN / case / rel).write_bytes(data)
            print(f"{case}: {len(produced)} files")
