"""Execution: the Python code blocks of a response are run, and a block that does not compile or crashes
counts against the record. Code that runs is no proof of a right answer, but code that cannot run is
surely a wrong one, and no judge is needed to see it.

Each block runs in its own subprocess (``python -I``) in an empty temporary folder, with a wall-clock
timeout, an address-space and a CPU-time limit (``setrlimit``), a cap on file size, no standard input,
and an audit hook that refuses network sockets and starting other programs. A block that cannot run here
for reasons that are not its fault (a module not installed, waiting for input, needing the network)
is *not run*, not failed. Score ``execution``: 1 when every block that ran succeeded, 0 otherwise; no
score when no block ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.S | re.I)
# Runs before the block, in the child: refuse network and process creation for good (audit hooks
# cannot be removed), then run the block as __main__.
_BOOT = r"""
import sys
def _guard(event, args):
    if event in ("socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto") or \
       event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty"):
        raise PermissionError(f"dataforge sandbox: {event} is not allowed")
sys.addaudithook(_guard)
del _guard
_code = __import__("os").environ.pop("DATAFORGE_EXEC_CODE")
exec(compile(_code, "<response>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""
_NOT_THEIRS = ("ModuleNotFoundError", "EOFError", "dataforge sandbox:")


@dataclass(frozen=True)
class ExecutionLimits:
    timeout: float = 5.0  # seconds of wall time per block
    memory_mb: int = 512  # address space
    max_blocks: int = 4  # per response


def code_blocks(text: str) -> list[str]:
    """The fenced Python blocks of `text` (```python / ```py)."""
    return [m.group(1) for m in _BLOCK.finditer(text or "")]


def _limits(limits: ExecutionLimits):
    def apply() -> None:  # in the child, before exec
        import resource

        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        cpu = int(limits.timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 1024 * 1024, 10 * 1024 * 1024))
        os.setsid()
    return apply


def run_block(code: str, limits: ExecutionLimits = ExecutionLimits()) -> tuple[str, str]:
    """("ok" | "failed" | "not_run", detail) for one block."""
    try:
        compile(code, "<response>", "exec")
    except SyntaxError as exc:
        return "failed", f"SyntaxError: {exc.msg} (line {exc.lineno})"
    except ValueError as exc:  # e.g. null bytes
        return "failed", f"ValueError: {exc}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATAFORGE_EXEC_CODE": code, "PYTHONIOENCODING": "utf-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="dataforge-exec-") as cwd:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", _BOOT], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=limits.timeout, preexec_fn=_limits(limits))
        except subprocess.TimeoutExpired:
            return "failed", f"timeout after {limits.timeout:g}s"
    if proc.returncode == 0:
        return "ok", ""
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    last = err[-1] if err else f"exit status {proc.returncode}"
    if proc.returncode < 0:
        last = {-9: "killed (CPU time limit)", -24: "killed (CPU time limit)", -11: "crashed (SIGSEGV)"}.get(
            proc.returncode, f"killed by signal {-proc.returncode}")
    if any(k in last for k in _NOT_THEIRS):
        return "not_run", last[:160]
    if "MemoryError" in last:
        last = "MemoryError (memory limit)"
    return "failed", last[:200]


def check_execution(output: str, limits: ExecutionLimits = ExecutionLimits()) -> tuple[float, str | None] | None:
    """(score, detail) for the response's Python blocks, or None when none ran."""
    ran, failures = 0, []
    for i, code in enumerate(code_blocks(output)[: limits.max_blocks], 1):
        status, detail = run_block(code, limits)
        if status == "not_run":
            continue
        ran += 1
        if status == "failed":
            failures.append(f"block {i}: {detail}")
    if not ran:
        return None
    return (0.0, "; ".join(failures)) if failures else (1.0, None)
