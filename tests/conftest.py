"""Shared test fixtures. Tests on ../shared/data skip with a clear reason where it is absent
(a user's clone has no ../shared); core tests use small files kept in the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("DATAFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
EXAMPLES = REPO / "examples"
TEST_DATA = Path(__file__).resolve().parent / "data"

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "self_instruct_seed_tasks.jsonl").exists(),
    reason=f"real public data not found at {SHARED_DATA} (only present in the project's workspace; "
    "set DATAFORGE_SHARED_DATA to point at it)",
)


# The longest modules (each several minutes on 2 cores) are collected first: under scripts/test.sh's
# `-n 2 --dist loadfile` one worker starts on them while the other takes the rest, instead of one worker
# finishing them alone at the end. The order inside each module is kept (the sort is stable).
LONGEST_MODULES = ("test_vllm_cpu.py", "test_ray.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: LONGEST_MODULES.index(item.path.name) if item.path.name in LONGEST_MODULES
               else len(LONGEST_MODULES))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; use together with the `needs_shared` marker."""
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes request/embedding caches under a temp dir, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "dataforge-cache"
    shared_onnx = os.environ.get("DATAFORGE_TEST_ONNX_DIR")
    if shared_onnx and not (cache / "onnx").exists():
        # scripts/mutation.py runs a fresh pytest session per mutant: without this each one would
        # export the embedder to ONNX again (10-30 s); the export is keyed by the model files' hash
        # and written atomically, so sessions can share it
        cache.mkdir(parents=True, exist_ok=True)
        Path(shared_onnx).mkdir(parents=True, exist_ok=True)
        (cache / "onnx").symlink_to(Path(shared_onnx).resolve(), target_is_directory=True)
    monkeypatch.setenv("DATAFORGE_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
