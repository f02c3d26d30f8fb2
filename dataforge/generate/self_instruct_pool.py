"""Self-Instruct's bootstrap: the pool of new tasks and how it grows, batch by batch.

The loop (batches, journal, replay, stopping rules) is `pool.GrowingPool`'s. Each request shows 8
in-context instructions (2 from the machine-made pool, fewer while it is small,
the rest from the human seeds), shuffled, and asks for more as a numbered list; the Alpaca variant
shows 3 seed tasks with input and output and asks for 20 complete tasks. Candidates go through the
filters of `instruction_filters` in request order and, if kept, join the pool (and the novelty index)
at once. A finished batch is one journal entry; replaying the entries rebuilds the pool exactly, so
later sampling is identical and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..llm import LLM, GenParams, LLMError
from ..prompts import RenderedPrompt, render
from .instruction_filters import InstructionFilter, normalize_instruction
from .pool import GrowingPool, gather_or_cancel  # noqa: F401  (gather_or_cancel: re-exported)
from .self_instruct_parse import SeedTask, parse_alpaca_tasks, parse_numbered_list, task_id_for

from .self_instruct import BOOTSTRAP_TOKENS

if TYPE_CHECKING:
    from .self_instruct import SelfInstructConfig



class TaskPool(GrowingPool):
    """The new tasks so far, the filters' verdicts, and the bootstrap requests that produced them."""

    def __init__(self, cfg: "SelfInstructConfig", seeds: list[SeedTask], llm: LLM):
        super().__init__(cfg.num_instructions, cfg.max_requests or 20 + 2 * cfg.num_instructions, cfg.patience,
                         cfg.requests_per_batch)
        self.cfg, self.seeds, self.llm = cfg, seeds, llm
        self.fewshot = llm.profile == "fewshot"
        self.filter = InstructionFilter(cfg.filter_config(), seeds=[s.instruction for s in seeds])

    def _size_text(self) -> str:
        return f"{len(self.seeds)}+{len(self.tasks)}"

    def _gen_params(self, batch: int, request: int) -> GenParams:
        cfg = self.cfg
        default = BOOTSTRAP_TOKENS[cfg.variant]["fewshot" if self.fewshot else "chat"]
        seed = int(hashlib.sha256(f"{cfg.seed}:{batch}:{request}".encode()).hexdigest()[:8], 16)
        return GenParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens or default, seed=seed)

    def _sample_examples(self, batch: int, request: int) -> list[tuple[str, str, dict[str, Any] | None]]:
        """(task id, instruction, seed task) for the in-context examples of one request."""
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}:bootstrap:{batch}:{request}")
        if cfg.variant == "alpaca":
            usable = [s for s in self.seeds if s.instances] or self.seeds
            picked = rng.sample(usable, min(cfg.alpaca_examples, len(usable)))
            return [(s.task_id, s.instruction, s.instances[0] if s.instances else {"input": "", "output": ""})
                    for s in picked]
        machine = rng.sample(self.tasks, min(cfg.machine_examples, len(self.tasks)))
        n_seed = min(cfg.seed_examples + cfg.machine_examples - len(machine), len(self.seeds))
        seeds = rng.sample(self.seeds, n_seed)
        chosen = [(t["task_id"], t["instruction"], None) for t in machine] + [(s.task_id, s.instruction, None) for s in seeds]
        rng.shuffle(chosen)
        return chosen

    def _render_request(self, examples: list[tuple[str, str, Any]]) -> RenderedPrompt:
        cfg, profile = self.cfg, self.llm.profile
        if cfg.variant == "alpaca":
            exs = [{"instruction": ins, "input": inst["input"], "output": inst["output"]} for _, ins, inst in examples]
            return render("si_alpaca", profile, examples=exs, count=cfg.alpaca_count)
        exs = [re.sub(r"\s+", " ", ins).strip().rstrip(":") for _, ins, _ in examples]
        return render("si_bootstrap", profile, examples=exs, count=8)

    async def _one_request(self, batch: int, request: int) -> dict[str, Any]:
        examples = self._sample_examples(batch, request)
        prompt = self._render_request(examples)
        try:
            completion = await self.llm.generate(prompt, self._gen_params(batch, request))
        except LLMError as exc:
            return {"error": str(exc)[:300], "examples": examples, "prompt": prompt, "candidates": []}
        start = len(examples) + 1 if self.fewshot else None
        if self.cfg.variant == "alpaca":
            candidates = parse_alpaca_tasks(completion.text, start)
        else:
            candidates = [{"instruction": c, "input": "", "output": ""}
                          for c in parse_numbered_list(completion.text, start)]
        truncated = bool(completion.truncated and candidates)
        if truncated:
            candidates = candidates[:-1]  # the last item was cut off at max_tokens
        return {"examples": examples, "prompt": prompt, "candidates": candidates, "truncated": truncated}

    def _filter_batch(self, batch: int, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Run the filters over the batch's candidates in request order; kept ones join the novelty index
        at once (Self-Instruct's sequential rule), the rest are counted by reason."""
        counts: Counter = Counter()
        kept, rejected = [], []
        room = self.cfg.num_instructions - len(self.tasks)
        for res in results:
            parents = [tid for tid, _, _ in res["examples"]]
            for cand in res["candidates"]:
                if len(kept) >= room:
                    counts["not_needed"] += 1
                    continue
                text = normalize_instruction(cand["instruction"])
                if self.cfg.variant == "alpaca" and (not cand["output"] or cand["output"] == cand["input"]):
                    # Alpaca tasks arrive with their answer: apply the instance post-filters before novelty
                    reason = "empty_output" if not cand["output"] else "input_equals_output"
                    counts[reason] += 1
                    if self.cfg.keep_rejected:
                        rejected.append({"instruction": text, "reason": reason, "detail": None, "batch": batch,
                                         "parents": parents})
                    continue
                verdict = self.filter(cand["instruction"])
                if verdict.kept:
                    kept.append({"task_id": task_id_for(text), "instruction": text, "input": cand["input"],
                                 "output": cand["output"], "batch": batch, "parents": parents,
                                 "template": res["prompt"].template_id, "template_hash": res["prompt"].hash})
                else:
                    counts[verdict.reason] += 1
                    if self.cfg.keep_rejected:
                        rejected.append({"instruction": text, "reason": verdict.reason, "detail": verdict.detail,
                                         "rouge_l": verdict.score, "batch": batch, "parents": parents})
        counts["kept"] += len(kept)
        return {"kind": "batch", "batch": batch, "kept": kept, "rejected": rejected, "counts": dict(counts),
                "requests": len(results), "errors": sum(1 for r in results if "error" in r),
                "truncated": sum(1 for r in results if r.get("truncated"))}
