"""Make `AutoConfig` / `AutoModelForCausalLM` know dataforge's model type once `dataforge` is imported.

Registering needs transformers' auto classes, whose import costs seconds (torch, the model registry); most
dataforge commands never need them. So registration happens when transformers loads its auto modules:
immediately if they are already loaded, else right after they load (an import hook on those two module
names, nothing else). The import order of `dataforge` and `transformers` does not matter.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_MODEL_MODULE = "transformers.models.auto.modeling_auto"


def _register(name: str) -> None:
    if name == _CONFIG_MODULE:
        from .train.hf_config import register_config

        register_config()
    else:
        from .train.hf_auto import register_model

        register_model()


class _ThenRegister(importlib.abc.Loader):
    """Wraps the real loader of an auto module: execute it, then register dataforge's classes."""

    def __init__(self, inner: importlib.abc.Loader, name: str):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register(self.name)


class _AutoModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in (_CONFIG_MODULE, _MODEL_MODULE):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenRegister(spec.loader, fullname)
        return spec


def install() -> None:
    """Idempotent: register now for auto modules already imported, and hook the others."""
    for name in (_CONFIG_MODULE, _MODEL_MODULE):
        if name in sys.modules:
            _register(name)
    if not any(isinstance(f, _AutoModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoModuleFinder())
