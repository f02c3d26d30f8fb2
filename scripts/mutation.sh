#!/usr/bin/env bash
# Mutation testing: `scripts/mutation.sh MODULE...` (files or folders of dataforge/) mutates the modules with
# mutmut in a scratch copy of this working tree, runs the tests mapped to them in scripts/mutation_tests.toml,
# and prints per module: mutants, killed, timeout, survived, equivalent, kill rate, then each surviving
# mutant's diff. Options: --jobs N (default 2), --keep (keep the scratch copy), --fail-under PCT.
# A benchmark, not part of the test suite; runs under `nice` (MUTATION_NICE, default 10) on shared machines.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
if ! "$py" -c "import mutmut" 2>/dev/null; then
  echo "error: mutmut is not importable by '$py': activate the project's venv (pip install -e '.[test]')" >&2
  exit 2
fi
exec nice -n "${MUTATION_NICE:-10}" "$py" "$repo/scripts/mutation.py" "$@"
