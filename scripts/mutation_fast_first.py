"""pytest plugin for mutation runs: the fastest tests first.

mutmut runs a mutant's tests with `-x` (stop at the first failure) in no particular order, so a mutant the
fastest test kills may first wait for the slowest one. This orders the tests by the durations mutmut
recorded in its stats run (`mutmut-stats.json` in the working folder), keeping each test file's tests
together (module fixtures are set up once): files by their fastest test, tests within a file by duration.
The verdicts are unchanged; only their cost falls. Loaded by scripts/mutation.py with `-p`.
"""

from __future__ import annotations

import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001 - pytest hook signature
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text(encoding="utf-8"))["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return                                   # the stats run itself: nothing recorded yet
    def cost(item) -> float:
        return durations.get(item.nodeid, durations.get(f"mutants/{item.nodeid}", 0.0))
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    files = sorted(by_file.values(), key=lambda its: min(cost(i) for i in its))
    items[:] = [i for its in files for i in sorted(its, key=cost)]
