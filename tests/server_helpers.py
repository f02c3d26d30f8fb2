"""Starting real OpenAI-compatible servers for tests (llama.cpp, vLLM): free port, wait until the model is
listed, stop the whole process group at the end. One mechanism for every real-server test module."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(cmd: list[str], port: int, model: str, log: Path, env: dict[str, str], timeout: float) -> Iterator[str]:
    """Run `cmd` (a server on `port`) until `model` is listed in /v1/models; yields the base URL.
    Fails the test with the server's log tail when it dies or is not up in `timeout` seconds."""
    base = f"http://127.0.0.1:{port}/v1"
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[2]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    if json.loads(r.read())["data"][0]["id"] == model:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                pytest.fail(f"{cmd[2]} not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"\n{cmd[2]} up in {time.perf_counter() - t0:.0f} s")
        yield base
        assert proc.poll() is None, f"the server died during the tests:\n{log.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and any engine processes it started
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
