"""llama.cpp's OpenAI-compatible server (`llama_cpp.server`, from llama-cpp-python[server]) as the tests
run it: ``python -m dataforge.testing.llama_server --model X.gguf --model_alias NAME --port P``.

The one difference from ``python -m llama_cpp.server``: the model loads without llama.cpp's runtime
weight repacking, which crashes the server with SIGSEGV on its first request on CPUs that advertise
AMX inside VMs that do not enable it (this project's build machines; see `local_backend.py`).
DATAFORGE_LLAMA_REPACK=1 turns repacking back on. Everything else is the real server.
"""

from __future__ import annotations

import runpy


def main() -> None:
    from ..llm.local_backend import _no_weight_repacking

    with _no_weight_repacking():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
