"""The in-process vLLM engine's arguments, with a stand-in `vllm` module (the real one runs in
tests/test_vllm_cpu.py): eager exactly where there is no CUDA device, unless the user says otherwise."""

from __future__ import annotations

import sys
import types

import pytest

torch = pytest.importorskip("torch")

from dataforge.llm.config import BackendConfig  # noqa: E402
from dataforge.llm.vllm_backend import VLLMBackend  # noqa: E402


@pytest.fixture
def engine_kwargs(monkeypatch):
    """A `vllm` module whose LLM records the keyword arguments it was built with."""
    seen: list[dict] = []
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.append(kw) or object()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    return seen


@pytest.mark.parametrize("cuda, setting, eager", [(False, None, True), (True, None, False),
                                                  (False, False, False), (True, True, True)])
def test_eager_where_no_cuda_device_unless_set(engine_kwargs, monkeypatch, cuda, setting, eager):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    backend = VLLMBackend(BackendConfig(backend="vllm", model="m", vllm_eager=setting, seed=7, n_ctx=4096,
                                        gpu_memory_utilization=0.5))
    backend._llm()
    backend._llm()                                   # loaded once
    assert engine_kwargs == [{"model": "m", "seed": 7, "gpu_memory_utilization": 0.5, "max_model_len": 4096,
                              "enforce_eager": eager}]


def test_default_context_is_the_models_own(engine_kwargs):
    """n_ctx at its default (2048) leaves the context to the model; one token more is passed on."""
    VLLMBackend(BackendConfig(backend="vllm", model="m"))._llm()
    VLLMBackend(BackendConfig(backend="vllm", model="m", n_ctx=2049))._llm()
    assert [kw["max_model_len"] for kw in engine_kwargs] == [None, 2049] and engine_kwargs[0]["seed"] == 0
