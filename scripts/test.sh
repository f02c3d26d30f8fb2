#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh tests/test_io.py -x`). Exits non-zero on any failure, and also when pytest
# collected no test at all (its exit code 5), so an empty run can never pass as green.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rc=0
python -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5) - refusing to report success" >&2
  exit 1
fi
exit "$rc"
