"""Every stage's outputs on fixed inputs and seeds are byte-identical to the recorded golden files
(see `tests/golden.py` for the cases, what is normalised and why, and how to re-record)."""

from __future__ import annotations

import difflib

import pytest

from golden import CASES, RENAMED, _environment, golden_files, run_case


def _renamed(rel: str) -> str:
    for old, new in RENAMED.items():
        if rel.endswith(old):
            return rel[: -len(old)] + new
    return rel


@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_the_golden_files(case, tmp_path, monkeypatch):
    _environment()
    monkeypatch.setenv("DATAFORGE_PROGRESS", "0")
    want = {_renamed(rel): data for rel, data in golden_files(case).items()}
    assert want, f"no golden files for {case}: run python tests/golden.py --write"
    got = run_case(case, tmp_path / case)
    assert sorted(got) == sorted(want), "a different set of output files"
    for rel in want:
        if got[rel] != want[rel]:
            diff = difflib.unified_diff(want[rel].decode().splitlines(), got[rel].decode().splitlines(),
                                        f"golden/{rel}", f"now/{rel}", lineterm="", n=0)
            pytest.fail(f"{case}: {rel} differs from the golden file:\n" + "\n".join(list(diff)[:20]))
