"""Self-Instruct's bootstrap: the pool of new tasks and how it grows, batch by batch.

Each request shows 8 in-context instructions (2 from the machine-made pool, fewer while it is small,
the rest from the human seeds), shuffled, and asks for more as a numbered list; the Alpaca variant
shows 3 seed tasks with input and output and asks for 20 complete tasks. Candidates go through the
filters of `instruction_filters` in request order and, if kept, join the pool (and the novelty index)
at once. A finished batch is one journal entry; replaying the entries rebuilds the pool exactly, so
later sampling is identical and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Awaitable

from ..llm import LLM, GenParams, LLMError
from ..progress import Bar
from ..prompts import RenderedPrompt, render
from .instruction_filters import InstructionFilter, normalize_instruction
from .self_instruct_parse import SeedTask, parse_alpaca_tasks, parse_numbered_list, task_id_for

from .self_instruct import BOOTSTRAP_TOKENS

if TYPE_CHECKING:
    from ..stage import StageJournal
    from .self_instruct import SelfInstructConfig



async def gather_or_cancel(coros: list[Awaitable[Any]]) -> list[Any]:
    """gather, but when one fails the others are cancelled before the error propagates, so nothing
    writes to the journal after the run has stopped."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class TaskPool:
    """The new tasks so far, the filters' verdicts, and the bootstrap requests that produced them."""

    def __init__(self, cfg: "SelfInstructConfig", seeds: list[SeedTask], llm: LLM):
        self.cfg, self.seeds, self.llm = cfg, seeds, llm
        self.fewshot = llm.profile == "fewshot"
        self.filter = InstructionFilter(cfg.filter_config(), seeds=[s.instruction for s in seeds])
        self.tasks: list[dict[str, Any]] = []  # accepted new tasks, in order
        self.rejected: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()  # filter decisions by reason
        self.requests = self.request_errors = self.truncated = self.batches_done = self.empty_streak = 0

    def apply_batch(self, e: dict[str, Any], live: bool = False) -> None:
        """Bring the state to 'after batch e'. Live, the filter already put the kept tasks into the novelty
        index; on replay they are added here, in the same order, so both end in the same state."""
        for task in e["kept"]:
            if not live:
                self.filter.add_to_pool(task["instruction"])
            self.tasks.append(task)
        self.rejected.extend(e.get("rejected", []))
        self.counts.update(e["counts"])
        self.requests += e["requests"]
        self.request_errors += e.get("errors", 0)
        self.truncated += e.get("truncated", 0)
        self.batches_done = e["batch"] + 1
        self.empty_streak = 0 if e["kept"] else self.empty_streak + 1

    async def grow(self, journal: "StageJournal", bar: Bar) -> str:
        """Batches of requests until the target, the request limit or the patience is reached; why it stopped."""
        cfg = self.cfg
        n = cfg.num_instructions
        max_requests = cfg.max_requests or 20 + 2 * n
        bar.advance(len(self.tasks))
        self._bar_status(bar)
        while True:
            if len(self.tasks) >= n:
                return "reached target"
            if self.requests >= max_requests:
                return f"max requests ({max_requests})"
            if self.empty_streak >= cfg.patience:
                return f"{cfg.patience} batches in a row without a new task"
            batch = self.batches_done
            results = await gather_or_cancel([self._one_request(batch, r) for r in range(cfg.requests_per_batch)])
            entry = self._filter_batch(batch, results)
            before = len(self.tasks)
            journal.append(entry)
            journal.sync()
            self.apply_batch(entry, live=True)
            bar.advance(len(self.tasks) - before)
            self._bar_status(bar)

    def _bar_status(self, bar: Bar) -> None:
        seen = sum(self.counts.values())
        rate = self.counts["kept"] / seen if seen else 0.0
        rejected = Counter({k: v for k, v in self.counts.items() if k not in ("kept", "not_needed")})
        top = ", ".join(f"{k} {v}" for k, v in rejected.most_common(3))
        bar.status(f"pool {len(self.seeds)}+{len(self.tasks)} · accept {rate:.0%} · {top}")

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
