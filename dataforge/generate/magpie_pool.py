"""Magpie's queries: raw completions from the chat template's pre-query prefix, filtered, in a growing pool.

Request g (a global index: shard i of n takes g = i, i+n, i+2n, ...) gets its own seed and, with topics,
its own topic, so any shard or resumed run asks exactly the requests a single run would. A reply stops at
the end of the user turn (the template's own marker); what comes back is checked as a user message
(`user_turns`: fragments, the model answering instead of asking, template leakage, non-requests) and then
by the Self-Instruct filters (length, keywords, ROUGE-L novelty against the pool and the input).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DataforgeError
from .evolve_step import derive_seed, item_rng
from .instruction_filters import FilterConfig, InstructionFilter, normalize_instruction
from .magpie_template import ChatTemplate, PreQuery, pre_query
from .pool import GrowingPool
from .self_instruct_parse import task_id_for
from .user_turns import clean_user_message, user_message_problem

if TYPE_CHECKING:
    from ..llm import LLM
    from .magpie import MagpieConfig


def shard_target(num: int, shard: tuple[int, int]) -> int:
    """Shard i of n makes its share of `num` (the first num % n shards one more)."""
    i, n = shard
    return num // n + (1 if i < num % n else 0)


class MagpiePool(GrowingPool):
    """Queries kept so far, each with the request, system prompt and topic that produced it."""

    def __init__(self, cfg: "MagpieConfig", llm: "LLM", template: ChatTemplate, topics: list[tuple[str, str]],
                 seeds: list[str], shard: tuple[int, int]):
        target = shard_target(cfg.num, shard)
        super().__init__(target, cfg.max_requests or 20 + 4 * target, cfg.patience, cfg.requests_per_batch)
        self.cfg, self.llm, self.template, self.topics, self.shard = cfg, llm, template, topics, shard
        self.filter = InstructionFilter(FilterConfig(min_words=cfg.min_words, max_words=cfg.max_words,
                                                     blacklist=tuple(cfg.blacklist), banned_prefixes=(),
                                                     rouge_threshold=cfg.rouge_threshold), seeds=seeds)
        self._pre_queries: dict[str | None, PreQuery] = {}

    def system_for(self, g: int) -> tuple[str | None, str | None]:
        """(system prompt, topic) of request g: the user's --system, or with topics the magpie_system template."""
        if not self.topics:
            return self.cfg.system, None
        from ..prompts import render

        topic, label = item_rng(self.cfg.seed, "topic", g).choice(self.topics)
        return render("magpie_system", "chat", system=self.cfg.system, topic=label).text, topic

    def pre_query(self, system: str | None) -> PreQuery:
        if system not in self._pre_queries:
            self._pre_queries[system] = pre_query(self.template, system)
        return self._pre_queries[system]

    async def _one_request(self, batch: int, request: int) -> dict[str, Any]:
        from ..llm import GenParams, LLMError
        from ..llm.base import EndpointRefused
        from ..stage import operation

        i, n = self.shard
        g = (batch * self.per_batch + request) * n + i
        system, topic = self.system_for(g)
        pq = self.pre_query(system)
        small = self.llm.profile == "fewshot"
        params = GenParams(temperature=self.cfg.query_temperature, top_p=self.cfg.query_top_p, stop=pq.stops,
                           max_tokens=self.cfg.query_max_tokens or (96 if small else 256),
                           seed=derive_seed(self.cfg.seed, "query", g))
        res: dict[str, Any] = {"request": g, "system": system, "topic": topic}
        try:
            with operation("query"):
                completion = await self.llm.complete(pq.prefix, params)
        except EndpointRefused as exc:
            raise DataforgeError(f"magpie needs raw completions and {self.llm.model_id} offers none ({exc}); "
                                 "hosted chat APIs do not: use the embedded model, llama.cpp, vLLM or another "
                                 "server with /v1/completions") from None
        except LLMError as exc:
            return {**res, "error": str(exc)[:300]}
        return {**res, "text": completion.text, "truncated": completion.truncated}

    def _filter_batch(self, batch: int, results: list[dict[str, Any]]) -> dict[str, Any]:
        from collections import Counter

        counts: Counter[str] = Counter()
        kept, rejected = [], []
        room = self.target - len(self.tasks)
        for res in results:
            if "error" in res:
                counts["request_failed"] += 1
                continue
            if len(kept) >= room:
                counts["not_needed"] += 1
                continue
            text = clean_user_message(res["text"])
            reason = user_message_problem(text, truncated=res["truncated"], min_words=self.cfg.min_words + 1)
            detail = None
            if reason is None:
                verdict = self.filter(text)
                if verdict.kept:
                    kept.append({"task_id": task_id_for(normalize_instruction(text)), "instruction": text,
                                 "request": res["request"], "system": res["system"], "topic": res["topic"],
                                 "batch": batch})
                    continue
                reason, detail = verdict.reason, verdict.detail
            counts[reason] += 1
            if self.cfg.keep_rejected:
                rejected.append({"instruction": text, "reason": reason, "detail": detail, "batch": batch,
                                 "request": res["request"]})
        counts["kept"] += len(kept)
        return {"kind": "batch", "batch": batch, "kept": kept, "rejected": rejected, "counts": dict(counts),
                "requests": len(results), "errors": counts["request_failed"],
                "truncated": sum(1 for r in results if r.get("truncated"))}
