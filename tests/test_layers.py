"""The package is layered and no import runs back up: commands -> pipeline -> stages (generate,
quality, curate, train) -> the stage contract -> llm, constraints -> io, prompts -> records and friends.
Every import counts, also the ones inside functions (a lazy import is still an arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "dataforge"
LAYERS = [
    {"errors", "paths", "records", "hashing", "progress", "shard", "sqlite_store", "__init__"},
    {"io", "prompts"},
    {"llm", "constraints", "testing"},
    {"stage"},
    {"generate", "quality", "curate", "train", "_hf_register"},
    {"pipeline"},
    {"commands", "cli", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
#: the only upward arrows, each with why
ALLOWED_UPWARD = {
    # `import dataforge` must make transformers' AutoModelForCausalLM know dataforge's model type (issue 17);
    # the hook itself imports nothing heavy until transformers loads its auto classes
    ("__init__.py", "_hf_register"),
}


def _top(module: Path) -> str:
    """The first component below `dataforge/` (a sub-package or a top-level module's name)."""
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported(module: Path) -> set[str]:
    """Top-level dataforge components `module` imports, wherever the import statement sits."""
    package = module.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "dataforge":
                parts = node.module.split(".")[1:]
                names = [parts[0]] if parts else [alias.name for alias in node.names]
            else:
                continue
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dataforge."))
    return found


def test_every_module_is_in_a_layer():
    tops = {_top(p) for p in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYER), f"place these in a layer: {sorted(tops - set(LAYER))}"


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = []
    for module in sorted(PACKAGE.rglob("*.py")):
        mine = LAYER[_top(module)]
        for name in _imported(module):
            if LAYER.get(name, -1) > mine and (str(module.relative_to(PACKAGE)), name) not in ALLOWED_UPWARD:
                upward.append(f"{module.relative_to(REPO)} imports dataforge.{name}")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_relative_and_lazy_imports():
    """The test above would pass vacuously if `_imported` missed imports: check it on a known module."""
    found = _imported(PACKAGE / "pipeline" / "engine.py")
    assert {"stage", "io", "llm", "hashing"} <= found
    assert "commands" not in found and "ray_executor" not in found  # `from .ray_executor`: same package
