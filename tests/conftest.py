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


# The longest modules (measured on 2 cores: vLLM's 300 s, the others 40-70 s) are collected first: under
# scripts/test.sh's `-n 2 --dist loadfile` one worker starts on vLLM's while the other takes the rest, and
# the run ends on short modules instead of one worker finishing a long one alone. The order inside each
# module is kept (the sort is stable).
LONGEST_MODULES = ("test_vllm_cpu.py", "test_kinds_real_models.py", "test_llama_server.py", "test_train_fsdp.py",
                   "test_ray.py", "test_gpu_smoke.py", "test_train_lora.py", "test_train_archs.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: LONGEST_MODULES.index(item.path.name) if item.path.name in LONGEST_MODULES
               else len(LONGEST_MODULES))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; use together with the `needs_shared` marker."""
    return SHARED_DATA


def _shared_cache_parts(tmp_path_factory) -> dict[str, Path]:
    """Cache folders keyed by content and written whole (renamed into place), so pytest sessions may share
    them: the ONNX export of the embedder (10-30 s to make) and the dequantised SmolLM2 (about 40 s).
    Shared between the xdist workers of one run (their base temps sit side by side), and for the ONNX export
    across the sessions of a mutation run (DATAFORGE_TEST_ONNX_DIR, set by scripts/mutation.py)."""
    parts: dict[str, Path] = {}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "shared-cache"
        parts = {name: root / name for name in ("onnx", "smollm2")}
    if os.environ.get("DATAFORGE_TEST_ONNX_DIR"):
        parts["onnx"] = Path(os.environ["DATAFORGE_TEST_ONNX_DIR"])
    return parts


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes request/embedding caches under a temp dir, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "dataforge-cache"
    for name, shared in _shared_cache_parts(tmp_path_factory).items():
        if not (cache / name).exists():
            cache.mkdir(parents=True, exist_ok=True)
            shared.mkdir(parents=True, exist_ok=True)
            (cache / name).symlink_to(shared.resolve(), target_is_directory=True)
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
