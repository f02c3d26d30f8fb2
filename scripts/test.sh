#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh tests/test_io.py -x`). Exits non-zero on any failure, and also when pytest
# collected no test at all (its exit code 5), so an empty run can never pass as green.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rc=0
# two workers, each module on one of them (modules share fixtures and, for vLLM, one engine at a time);
# most tests run torch or llama.cpp on one thread, so 2 workers use both cores. Modules go out in the
# order tests/conftest.py collects them (longest first), not xdist's most-tests-first.
# DATAFORGE_TEST_WORKERS=0 runs in this process; `-n N` among the arguments also overrides it.
python -m pytest -q -n "${DATAFORGE_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5) - refusing to report success" >&2
  exit 1
fi
exit "$rc"
