"""One `dataforge run` per run directory at a time: a second one would overwrite the first's work."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from ..errors import DataforgeError


class RunLock:
    """An exclusive lock on `<run_dir>/.lock` holding the owner's pid; it goes with the process."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise DataforgeError(f"{self.path.parent}: another `dataforge run` is using this run directory "
                                 f"(pid {holder}); wait for it or pick another --run-dir") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock; a killed run's lock goes with its process
