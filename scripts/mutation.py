"""Mutation testing of named modules with mutmut: the kill rate per module and every surviving mutant.

A surviving mutant is a change to the code that no test noticed, i.e. a missing test. This runs mutmut in a
scratch copy of the working tree (under `.mutation/`, removed afterwards unless --keep), so the tree itself is
never mutated, and several worktrees can run at once. The tests run for a module come from ONE mapping,
`scripts/mutation_tests.toml`; mutants explained as equivalent (no test can kill them) come from
`scripts/mutation_equivalent.toml`, matched by function and change so that an entry can never hide another
mutant after the code moves. Invoked through `scripts/mutation.sh`; a benchmark, not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS_MAP = REPO / "scripts" / "mutation_tests.toml"
EQUIVALENT = REPO / "scripts" / "mutation_equivalent.toml"
FAST_FIRST = REPO / "scripts" / "mutation_fast_first.py"   # pytest plugin: a mutant's fastest tests first
SCRATCH_ROOT = REPO / ".mutation"
PACKAGE = "dataforge"
RESOURCES = ["prompts", "pipelines", "examples"]  # read by the code through dataforge.paths.resource_dir

# mutmut's verdicts, folded into the columns we report
DETECTED = {"killed": "killed", "timeout": "timeout", "segfault": "timeout"}  # segfault = SIGKILL after timeout


class UsageError(Exception):
    pass


# ------------------------------------------------------------------ what to mutate and which tests run

def target_files(arg: str) -> tuple[str, list[str]]:
    """A module argument (file or folder, absolute or relative to the repo) -> (its repo-relative name,
    its .py files, repo-relative)."""
    p = Path(arg)
    p = (p if p.is_absolute() else (Path.cwd() / p)).resolve()
    if not p.exists():
        p = (REPO / arg).resolve()
    if not p.exists():
        raise UsageError(f"{arg}: no such file or folder")
    try:
        rel = p.relative_to(REPO)
    except ValueError:
        raise UsageError(f"{arg}: not inside this repository ({REPO})") from None
    if rel.parts[:1] != (PACKAGE,):
        raise UsageError(f"{arg}: only modules of the {PACKAGE} package can be mutated")
    files = [rel] if p.is_file() else sorted(x.relative_to(REPO) for x in p.rglob("*.py"))
    files = [f for f in files if f.suffix == ".py" and "__pycache__" not in f.parts]
    if not files:
        raise UsageError(f"{arg}: no Python file in it")
    return rel.as_posix(), [f.as_posix() for f in files]


def load_test_map() -> dict[str, list[str]]:
    data = tomllib.loads(TESTS_MAP.read_text(encoding="utf-8"))
    table = data.get("tests")
    if not isinstance(table, dict):
        raise UsageError(f"{TESTS_MAP}: needs a [tests] table (module = [test files])")
    return {k.rstrip("/"): list(v) for k, v in table.items()}


def tests_for(file: str, mapping: dict[str, list[str]]) -> list[str]:
    """The file's own entry, else the nearest folder's; refused when there is none."""
    parts = Path(file).parts
    for n in range(len(parts), 0, -1):
        key = "/".join(parts[:n])
        if key in mapping:
            return mapping[key]
    raise UsageError(f"{file}: no tests mapped to it in {TESTS_MAP.relative_to(REPO)}; add an entry "
                     "(module or folder = [test files]) rather than running the whole suite")


# ------------------------------------------------------------------ equivalent mutants

def change_of(diff: str) -> tuple[str, ...]:
    """The body of a mutant's diff (context, - and + lines; no headers), or an entry's `change` text."""
    lines = [ln.rstrip() for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(lines)


def matches(entry: tuple[str, ...], body: tuple[str, ...]) -> bool:
    """An entry names a mutant when its lines (the -/+ lines, and as much context as needed to tell the
    mutant from another with the same change elsewhere in the function) occur together in its diff."""
    n = len(entry)
    return any(body[i:i + n] == entry for i in range(len(body) - n + 1)) if n else False


def function_of(mutant: str) -> str:
    return mutant.partition("__mutmut_")[0]


@dataclass
class Equivalent:
    mutant: str
    change: str
    reason: str
    used: bool = False


def load_equivalents() -> list[Equivalent]:
    if not EQUIVALENT.exists():
        return []
    data = tomllib.loads(EQUIVALENT.read_text(encoding="utf-8"))
    out = []
    for i, e in enumerate(data.get("equivalent", [])):
        missing = [k for k in ("mutant", "change", "reason") if not str(e.get(k, "")).strip()]
        if missing:
            raise UsageError(f"{EQUIVALENT.name}: entry {i + 1} lacks {', '.join(missing)}")
        out.append(Equivalent(e["mutant"], change_of(e["change"]), e["reason"].strip()))
    return out


# ------------------------------------------------------------------ the scratch copy and the mutmut run

def make_scratch() -> Path:
    """Copy the working tree as it is (tracked and untracked, not ignored files) into a scratch folder."""
    SCRATCH_ROOT.mkdir(exist_ok=True)
    (SCRATCH_ROOT / ".gitignore").write_text("*\n")  # never committed, even where .gitignore lacks it
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH_ROOT))
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the tree is gone from the copy too
            dst = scratch / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return scratch


def write_mutmut_config(scratch: Path, files: list[str], tests: list[str], include_slow: bool) -> None:
    pyproject = scratch / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    if "[tool.mutmut]" in text:
        raise UsageError("pyproject.toml has its own [tool.mutmut] section; this script owns that configuration")
    conf = {
        "source_paths": [PACKAGE],
        "only_mutate": files,
        "also_copy": RESOURCES,
        "pytest_add_cli_args_test_selection": tests,
        # tests marked slow (real models, large corpora) cost minutes per mutant: every behaviour needs a
        # fast test anyway, so they are left out unless asked for
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", FAST_FIRST.stem] + ([] if include_slow else ["-m", "not slow"]),
        "use_git_change_detection": False,
        "use_setproctitle": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in conf.items()]
    pyproject.write_text(text + "\n".join(lines) + "\n", encoding="utf-8")


def run_mutmut(scratch: Path, jobs: int, log: Path, only: list[str] | None = None) -> int:
    """mutmut in its own process group (so an interrupt stops its workers too), output to `log`; a
    progress line every 30 s when the output is not a terminal."""
    env = dict(os.environ)
    # Tests and their subprocesses must import the mutated copy, never an installed dataforge (an editable
    # install points at some checkout). The folder must exist before Python starts: a missing PYTHONPATH
    # entry is cached as "nothing here" and the installed package would win.
    (scratch / "mutants").mkdir()
    shutil.copy2(FAST_FIRST, scratch / "mutants" / FAST_FIRST.name)   # importable as a pytest plugin (-p)
    env["PYTHONPATH"] = str(scratch / "mutants")
    # mutmut forks each mutant's run from a process that has already run the tests once; torch's OpenMP
    # pool (libgomp) does not survive a fork, so the child hangs in its first parallel op (embeddings) until
    # the wall timeout, and the mutant is wrongly counted as detected. One thread means no pool.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # Every mutant's run is a fresh pytest session with a fresh cache folder, so each test that embeds
    # would export the embedder to ONNX again (10-30 s a mutant); tests/conftest.py links the sessions'
    # export folder here instead (exports are keyed by the model files' hash and written atomically).
    env.setdefault("DATAFORGE_TEST_ONNX_DIR", str(SCRATCH_ROOT / "onnx"))
    shared = REPO.parent / "shared" / "data"
    if shared.is_dir():
        env.setdefault("DATAFORGE_SHARED_DATA", str(shared))  # conftest looks beside the repo, not the copy
    cmd = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()", "run", "--max-children", str(jobs),
           *(only or [])]
    tty = sys.stdout.isatty()
    if not tty:
        print(f"mutmut running (log: {log})", flush=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=scratch, env=env, start_new_session=True,
                                stdout=None if tty else out, stderr=None if tty else subprocess.STDOUT)
        try:
            while True:
                try:
                    return proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    if not tty:
                        print(f"  {_progress(log)}", flush=True)
        finally:
            if proc.poll() is None:
                _stop(proc)


def _progress(log: Path) -> str:
    """The last 'done/total' counter mutmut printed (its status line), else its last phase."""
    tail = log.read_bytes()[-4000:].decode(errors="replace")
    found = re.findall(r"(\d+)/(\d+)\s+\S+\s*(\d+)", tail)
    if found:
        done, total, killed = found[-1]
        return f"{done}/{total} mutants tested ({killed} killed so far)"
    phases = re.findall(r"(Generating mutants|Running stats|Running clean tests|Running forced fail test)", tail)
    return phases[-1].lower() if phases else "starting"


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------------ results

@dataclass
class FileResult:
    path: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("mutants", "killed", "timeout", "survived", "no tests", "equivalent", "not run"), 0))
    survivors: list[tuple[str, str]] = field(default_factory=list)  # (name, diff)
    killed_but_listed: list[str] = field(default_factory=list)
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)  # (entry, mutants it matches)
    carried: int = 0  # verdicts taken from an earlier run (--carry-from)

    def rate(self) -> float | None:
        c = self.counts
        tested = c["mutants"] - c["equivalent"] - c["not run"]
        return None if tested <= 0 else (c["killed"] + c["timeout"]) / tested


def mutant_changes(scratch: Path, path: str) -> dict[str, tuple[str, ...]]:
    """Each mutant of `path` in a scratch copy -> its change: the diff (3 lines of context) between the
    mutated function and the original, as mutmut wrote both into the mutants file. One parse per file (mutmut's
    own diff re-reads the file for every mutant, far too slow for hundreds of carried verdicts)."""
    import ast
    import difflib

    source = (scratch / "mutants" / path).read_text(encoding="utf-8")
    lines = source.splitlines()                  # (ast.get_source_segment splits the file again per call)
    funcs = {node.name: "\n".join(lines[node.lineno - 1: node.end_lineno])
             for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and "__mutmut_" in node.name}
    module = path[:-3].replace("/", ".").removesuffix(".__init__")
    out = {}
    for name, text in funcs.items():
        head, _, tail = name.rpartition("__mutmut_")
        orig = funcs.get(f"{head}__mutmut_orig")
        if tail == "orig" or orig is None:
            continue
        a = orig.replace(f"{head}__mutmut_orig", "FUNC").splitlines()
        b = text.replace(name, "FUNC").splitlines()
        out[f"{module}.{name}"] = change_of("\n".join(difflib.unified_diff(a, b, lineterm="", n=3)))
    return out


def detected_in(scratch: Path, files: list[str]) -> dict[str, tuple[int, tuple[str, ...]]]:
    """The mutants an earlier kept run detected: name -> (exit code, change), for --carry-from."""
    import json as _json

    from mutmut.stats import status_by_exit_code

    out = {}
    for path in files:
        codes = _json.loads((scratch / "mutants" / f"{path}.meta").read_text(encoding="utf-8"))["exit_code_by_key"]
        changes = mutant_changes(scratch, path)
        for name, code in codes.items():
            if code is not None and status_by_exit_code[code] in DETECTED and name in changes:
                out[name] = (code, changes[name])
    return out


def carried_from(scratches: list[Path] | None, files: list[str]) -> dict[str, tuple[int, tuple[str, ...]]] | None:
    """The detected verdicts of earlier kept runs (later ones win), or None without --carry-from."""
    if not scratches:
        return None
    out: dict[str, tuple[int, tuple[str, ...]]] = {}
    for scratch in scratches:
        out.update(detected_in(scratch.resolve(), files))
    return out


def collect(scratch: Path, files: list[str], equivalents: list[Equivalent],
            carried: dict[str, tuple[int, tuple[str, ...]]] | None = None) -> list[FileResult]:
    """Read mutmut's verdicts from its meta files, in-process (mutmut reads its config from the cwd).
    `carried`: verdicts of an earlier run, used for mutants not run now whose change is exactly the same."""
    os.chdir(scratch)
    from mutmut.configuration import reset_config
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    reset_config()  # a previous run's configuration (another scratch copy) must not be reused
    results = []
    for path in files:
        res = FileResult(path)
        data = SourceFileMutationData(path=Path(path))
        data.load()
        verdicts = []  # (name, status, diff body)
        changes = mutant_changes(scratch, path)
        for name, code in sorted(data.exit_code_by_key.items(), key=lambda kv: _natural(kv[0])):
            if code is None and carried and name in carried and changes.get(name) == carried[name][1]:
                code = carried[name][0]
                res.carried += 1
            status = status_by_exit_code[code]
            res.counts["mutants"] += 1
            if code is None or status == "check was interrupted by user":
                res.counts["not run"] += 1
                continue
            listed = any(function_of(e.mutant) == function_of(name) for e in equivalents)
            diff = ""
            if status not in DETECTED or listed:      # the printed diff is mutmut's; matching uses either
                diff = get_diff_for_mutant(name, path=path) if status not in DETECTED or name not in changes \
                    else "\n".join(changes[name])
            verdicts.append((name, status, diff))
        # an entry applies only when it names exactly one mutant of its function (killed ones included)
        named: dict[str, Equivalent] = {}
        for e in equivalents:
            hits = [name for name, _, diff in verdicts if diff and function_of(e.mutant) == function_of(name)
                    and matches(e.change, change_of(diff))]
            if len(hits) == 1:
                named[hits[0]] = e
                e.used = True
            elif len(hits) > 1:
                e.used = True
                res.ambiguous.append((e.mutant, hits))
        for name, status, diff in verdicts:
            match = named.get(name)
            if status in DETECTED:
                res.counts[DETECTED[status]] += 1
                if match:
                    res.killed_but_listed.append(name)
            elif match:
                res.counts["equivalent"] += 1
            else:  # survived, or no selected test reached it (code run at import time, or untested)
                res.counts["no tests" if status == "no tests" else "survived"] += 1
                res.survivors.append((f"{name} ({status})" if status != "survived" else name, diff))
        results.append(res)
    return results


def _natural(name: str) -> tuple[str, int]:
    head, _, num = name.rpartition("__mutmut_")
    return head, int(num) if num.isdigit() else 0


def print_report(groups: list[tuple[str, list[FileResult]]], equivalents: list[Equivalent],
                 mutated: list[str]) -> None:
    cols = ("mutants", "killed", "timeout", "survived", "no tests", "equivalent", "not run")
    width = max(len(r.path) for _, rs in groups for r in rs) + 2
    head = f"{'module':<{width}}" + "".join(f"{c:>11}" for c in cols) + f"{'kill rate':>11}"
    print("\n" + head + "\n" + "-" * len(head))

    def row(label: str, counts: dict[str, int], rate: float | None) -> None:
        shown = "n/a" if rate is None else f"{100 * rate:.1f}%"
        print(f"{label:<{width}}" + "".join(f"{counts[c]:>11}" for c in cols) + f"{shown:>11}")

    for arg, rs in groups:
        for r in rs:
            row(r.path, r.counts, r.rate())
        if len(rs) > 1:
            total = FileResult(arg + "/ (all)")
            for r in rs:
                for c in cols:
                    total.counts[c] += r.counts[c]
            row(total.path, total.counts, total.rate())
    print("\nkill rate = (killed + timeout) / (mutants - equivalent - not run): a timeout counts as detected (as"
          " in mutmut),\n'no tests' (no selected test ran the function, e.g. code run at import time) as not.")

    for _, rs in groups:
        for r in rs:
            for name, diff in r.survivors:
                print(f"\nSURVIVED {name}\n{diff}")
            for name in r.killed_but_listed:
                print(f"\nNOTE {name} is listed in {EQUIVALENT.name} but a test kills it: remove the entry")
            for entry, hits in r.ambiguous:
                print(f"\nAMBIGUOUS {EQUIVALENT.name}: the entry for {entry} matches {', '.join(hits)}; "
                      "add context lines to its change (not applied)")
    modules = {p[:-3].replace("/", ".").removesuffix(".__init__") for p in mutated}
    for e in equivalents:
        if not e.used and function_of(e.mutant).rpartition(".")[0] in modules:
            print(f"\nSTALE {EQUIVALENT.name}: no mutant matches {e.mutant} any more (code moved?): "
                  "re-check and update or drop the entry")
    listed = [e for e in equivalents if e.used]
    if listed:
        print("\nEquivalent mutants (not counted; reasons from scripts/mutation_equivalent.toml):")
        for e in listed:
            print(f"  {e.mutant}: {e.reason}")


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # so the scratch copy and mutmut's workers are cleaned up
    ap = argparse.ArgumentParser(prog="scripts/mutation.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="+", help="files or folders of the dataforge package")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", 2)),
                    help="mutants tested in parallel (default 2, or $MUTATION_JOBS)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (to run `mutmut browse` in it)")
    ap.add_argument("--include-slow", action="store_true", help="also run tests marked slow (real models)")
    ap.add_argument("--only", action="append", default=None, metavar="GLOB",
                    help="run only the mutants whose mutmut name matches GLOB (repeatable), e.g. a sample of a huge "
                         "function: 'dataforge.train.trainer.x_run_train__mutmut_*7'; the others count as 'not run'")
    ap.add_argument("--carry-from", type=Path, action="append", default=None, metavar="SCRATCH",
                    help="a kept scratch copy (--keep) of an earlier run of the same modules: its detected mutants "
                         "that --only leaves out count as detected when their change is exactly the same now. For "
                         "finishing an interrupted run after tests were added (tests only kill more); never after "
                         "the tests lost a check (repeatable: later copies win)")
    ap.add_argument("--report-from", type=Path, default=None, metavar="SCRATCH",
                    help="run nothing: report again on a kept scratch copy of these modules (after entries were "
                         "added to the equivalents list, or with --carry-from)")
    ap.add_argument("--fail-under", type=float, default=None, metavar="PCT",
                    help="exit 1 when a module's kill rate is below PCT")
    args = ap.parse_args(argv)
    try:
        mapping = load_test_map()
        groups = [target_files(arg) for arg in args.modules]
        files = list(dict.fromkeys(f for _, fs in groups for f in fs))
        # one mutmut run per distinct test set, so a module's figures never depend on what it was run with
        runs: dict[tuple[str, ...], list[str]] = {}
        for f in files:
            runs.setdefault(tuple(tests_for(f, mapping)), []).append(f)
        equivalents = load_equivalents()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results: dict[str, FileResult] = {}
    for tests, run_files in runs.items():
        if args.report_from:
            got = collect(args.report_from.resolve(), run_files, equivalents, carried_from(args.carry_from, run_files))
            os.chdir(REPO)
        else:
            got = mutate(run_files, list(tests), equivalents, args)
        if got is None:
            return 1
        for r in got:  # a first figure as soon as its run ends; the full table comes at the end
            rate = r.rate()
            print(f"  done {r.path}: {r.counts['killed'] + r.counts['timeout']}/{r.counts['mutants']} detected"
                  + ("" if rate is None else f", kill rate {100 * rate:.1f}%")
                  + (f" ({r.carried} verdicts carried from {', '.join(map(str, args.carry_from))})" if r.carried else ""),
                  flush=True)
        results.update((r.path, r) for r in got)
    print_report([(arg, [results[f] for f in fs]) for arg, fs in groups], equivalents, files)
    incomplete = [r.path for r in results.values() if r.counts["not run"]]
    if incomplete and args.only:
        print(f"note: --only ran a selection; {sum(results[p].counts['not run'] for p in incomplete)} mutants were "
              f"not run: the figures are those of the selection", file=sys.stderr)
    elif incomplete:
        print(f"error: not every mutant was run in {', '.join(incomplete)}: the figures are incomplete",
              file=sys.stderr)
        return 1
    if args.fail_under is not None:
        low = [r.path for r in results.values() if (r.rate() or 0.0) * 100 < args.fail_under]
        if low:
            print(f"kill rate under {args.fail_under}% in: {', '.join(low)}", file=sys.stderr)
            return 1
    return 0


def mutate(files: list[str], tests: list[str], equivalents: list[Equivalent],
           args: argparse.Namespace) -> list[FileResult] | None:
    """One mutmut run over `files` with `tests`, in its own scratch copy; None when mutmut failed."""
    scratch = make_scratch()
    keep = args.keep
    try:
        write_mutmut_config(scratch, files, tests, args.include_slow)
        print(f"mutating {' '.join(files)} in {scratch}; tests: {' '.join(tests)}", flush=True)
        rc = run_mutmut(scratch, args.jobs, scratch / "mutmut.log", args.only)
        if rc != 0:
            log = scratch / "mutmut.log"
            if log.exists():
                sys.stdout.write(log.read_text(errors="replace")[-4000:])
            print(f"error: mutmut exited with {rc}; no figures (the clean or forced-fail run failed?)",
                  file=sys.stderr)
            keep = True
            return None
        return collect(scratch, files, equivalents, carried_from(args.carry_from, files))
    finally:
        os.chdir(REPO)
        if keep:
            print(f"scratch copy kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
