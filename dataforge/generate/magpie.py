"""Magpie: seedless instruction data from an aligned chat model's own template.

The chat template is rendered up to where the user's message begins (`magpie_template`); a raw completion
from there makes the model write a user query itself, stopping at the end of the user turn. Queries go
through the user-message checks and the Self-Instruct filters into a growing pool (`magpie_pool`), and each
kept query is then answered as a normal chat turn. Steering: ``--system`` (the template's system prompt),
``--topics`` (each request draws a topic, put into the system prompt through ``prompts/magpie_system``),
``--steer stats.json`` (the thin topics of a `balance` run join the topics, as in evolve).

Raw completions are required: the embedded model, llama.cpp, vLLM or any server with ``/v1/completions``.
A server that refuses them (hosted chat APIs) stops the run at once with a clear message. An optional
input file seeds the novelty filter (new queries must not repeat its instructions; it is not written).

>>> summary = run_magpie(None, "pool.jsonl", MagpieConfig(num=20))   # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Iterator, Optional

from pydantic import Field

from ..records import Lineage, Record, utc_now
from ..stage import Cli, IOConfig, Stage, StageContext, operation
from ..stage.config import IO_PANEL
from .evolve_step import derive_seed
from .instruction_filters import DEFAULT_BLACKLIST

_M = "Magpie"
_F = "Filters"
ANSWER_TOKENS = {"chat": 768, "fewshot": 256}


class MagpieConfig(IOConfig):
    """Options of `dataforge magpie` (and of a `magpie` pipeline stage)."""

    num: Annotated[int, Cli("-n", "--num", panel=_M)] = Field(100, ge=1, description="records to make (all shards "
                                                                                      "together)")
    system: Annotated[Optional[str], Cli(panel=_M, default_text="the template's own default")] = Field(
        None, description="system prompt rendered into the pre-query template")
    topics: Annotated[list[str], Cli(panel=_M, metavar="T,T,...")] = Field(
        default_factory=list, description="topics to steer queries to (each request draws one, put into the "
        "system prompt)")
    steer: Annotated[Optional[str], Cli(panel=_M)] = Field(
        None, description="stats.json from `dataforge balance`: its thin topics join --topics")
    chat_template: Annotated[Optional[str], Cli(panel=_M, default_text="the model's own (GGUF, server /props, model "
                                                "folder)")] = Field(
        None, description="the model's chat template: a GGUF file, a model folder or a Jinja file")
    query_temperature: Annotated[float, Cli(panel=_M)] = Field(1.0, ge=0, description="sampling temperature of queries")
    query_top_p: Annotated[float, Cli(panel=_M)] = Field(1.0, gt=0, le=1, description="nucleus sampling of queries")
    query_max_tokens: Annotated[Optional[int], Cli(panel=_M, default_text="256 chat models, 96 few-shot")] = Field(
        None, ge=8, description="max tokens of a query (a query cut there is a fragment)")
    answer_temperature: Annotated[float, Cli(panel=_M)] = Field(0.7, ge=0, description="sampling temperature of answers")
    answer_max_tokens: Annotated[Optional[int], Cli(panel=_M, default_text="768 chat models, 256 few-shot")] = Field(
        None, ge=8, description="max tokens of an answer")
    requests_per_batch: Annotated[int, Cli("--batch", panel=_M)] = Field(
        8, ge=1, description="query requests sent together; the novelty pool grows between batches")
    max_requests: Annotated[Optional[int], Cli(panel=_M, default_text="20 + 4 x n")] = Field(
        None, ge=1, description="stop after this many query requests")
    patience: Annotated[int, Cli(panel=_M)] = Field(10, ge=1, description="stop after this many batches in a row "
                                                                          "without a new query")
    max_in_flight: Annotated[int, Cli(panel=_M)] = Field(16, ge=1, description="answer requests in flight at once")
    min_words: Annotated[int, Cli(panel=_F)] = Field(3, ge=0, description="a query needs more than this many words")
    max_words: Annotated[int, Cli(panel=_F)] = Field(150, ge=1, description="and at most this many")
    blacklist: Annotated[list[str], Cli(panel=_F, metavar="WORD,WORD,...")] = Field(
        default_factory=lambda: list(DEFAULT_BLACKLIST), description="whole-word keywords that drop a query")
    rouge_threshold: Annotated[float, Cli(panel=_F)] = Field(
        0.7, ge=0, le=1, description="keep iff max ROUGE-L F vs. the pool and the input <= this")
    keep_rejected: Annotated[bool, Cli(panel=_M)] = Field(
        False, description="also write dropped queries (status rejected, with the reason)")
    seed: int = Field(0, description="seed of every request (derived per request)")
    shard: Annotated[Optional[str], Cli("--shard", panel=IO_PANEL, metavar="I/N")] = Field(
        None, description="make only shard i of n of the requests (request g goes to shard g mod n + 1) and its "
        "share of -n, for parallel workers")

    def shard_spec(self) -> str | None:
        return None  # the input (a novelty pool) is read whole; --shard splits the requests


class MagpieStage(Stage[MagpieConfig]):
    """Seedless generation (Magpie): the model writes user queries from its own chat template's pre-query
    prefix, fragments and non-questions are dropped and counted, then each query is answered as a chat turn."""

    name = "magpie"
    partial_output = True  # stopped by a budget, it writes the queries answered so far
    Config = MagpieConfig
    input_optional = True
    input_help = "records whose instructions new queries must not repeat (they seed the novelty filter; not written)."
    output_neutral = frozenset({"max_in_flight", "out_format", "strict", "num", "max_requests", "patience",
                                "keep_rejected"})
    side_inputs = ("steer",)

    def __init__(self, cfg: MagpieConfig):
        super().__init__(cfg)
        self.pool: Any = None
        self.template: Any = None
        self.answers: dict[str, dict[str, Any]] = {}
        self.stopped = ""

    def needs_llm(self) -> bool:
        return True

    def sample_plan(self, n_input: int):
        """A dry run sends one batch of query requests (with the whole input as the novelty pool) and answers
        what it kept; the job is (its share of -n) / (queries the batch kept) times larger."""
        from ..stage.estimate import SamplePlan

        cfg = self.cfg.model_copy(update={"max_requests": self.cfg.requests_per_batch, "keep_rejected": False})
        return SamplePlan(cfg, n_input, None, f"one batch of {self.cfg.requests_per_batch} query requests "
                          f"(the job: {self.cfg.num:,} records)")

    def sample_scale(self, summary: Any, n_input: int) -> float | None:
        made, target = int(summary.details.get("made") or 0), int(summary.details.get("target") or 0)
        return target / made if made and target else None

    def parallel_requests(self, n_input: int) -> int:
        return max(1, min(max(self.cfg.requests_per_batch, self.cfg.max_in_flight), self.cfg.num))

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        if self.cfg.chat_template:  # what the template says, not only where it is
            from .magpie_template import load_template

            fp["chat_template_hash"] = load_template(self.cfg.chat_template).hash
        return fp

    def _topics(self) -> list[tuple[str, str]]:
        """(topic, label shown to the model): --topics, then the thin topics of --steer."""
        topics = [(t, t) for t in self.cfg.topics]
        if self.cfg.steer:
            from ..curate.steer import load_steering

            steering = load_steering(self.cfg.steer)
            topics += [(t, steering.label_for(t)) for t in steering.thin_topics if t not in self.cfg.topics]
        return topics

    def _shard(self) -> tuple[int, int]:
        if not self.cfg.shard:
            return 0, 1
        from ..shard import parse_shard

        i, n = parse_shard(self.cfg.shard) or (1, 1)
        return i - 1, n  # 0-based: request g belongs to shard g % n

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        from .magpie_pool import MagpiePool
        from .magpie_template import find_template

        seeds = [r.instruction for r in records]
        self.template = find_template(ctx.llm, self.cfg.chat_template)
        pool = self.pool = MagpiePool(self.cfg, ctx.llm, self.template, self._topics(), seeds, self._shard())
        pool.pre_query(pool.system_for(self._shard()[0])[0])  # a template that cannot work fails before any request
        for e in ctx.journal.entries:  # replay what a killed run finished
            if e.get("kind") == "batch":
                pool.apply_batch(e)
            else:
                self.answers[e["task_id"]] = e
        with ctx.bar("magpie", total=pool.target, unit="query") as bar:
            self.stopped = await pool.grow(ctx.journal, bar)
        await pool.each_task(ctx, "answers", self.answers, self._answer(ctx), self.cfg.max_in_flight)

    def _answer(self, ctx: StageContext):
        from ..llm import GenParams, LLMError

        llm, cfg = ctx.llm, self.cfg
        tokens = cfg.answer_max_tokens or ANSWER_TOKENS["fewshot" if llm.profile == "fewshot" else "chat"]

        async def ask(task: dict[str, Any]) -> dict[str, Any]:
            messages = ([{"role": "system", "content": task["system"]}] if task["system"] else []) + \
                [{"role": "user", "content": task["instruction"]}]
            params = GenParams(temperature=cfg.answer_temperature, max_tokens=tokens,
                               seed=derive_seed(cfg.seed, "answer", task["request"]))
            entry: dict[str, Any] = {"kind": "answer", "task_id": task["task_id"], "output": "", "truncated": False,
                                     "error": None}
            try:
                with operation("answer"):
                    completion = await llm.chat(messages, params)
            except LLMError as exc:
                return {**entry, "error": str(exc)[:300]}
            return {**entry, "output": completion.text.strip(), "truncated": completion.truncated}
        return ask

    def _record(self, task: dict[str, Any], model: str) -> Record:
        a = self.answers[task["task_id"]]
        meta: dict[str, Any] = {"magpie": {k: task[k] for k in ("request", "system", "topic") if task[k] is not None}}
        if a["truncated"]:
            meta["finish_reason"] = "length"  # the gate's truncation check reads it
        rec = Record(instruction=task["instruction"], output=a["output"], topic=task["topic"], meta=meta,
                     lineage=Lineage(generator="magpie", operation="pre_query", round=0, model=model,
                                     template=f"chat_template:{self.template.source}",
                                     template_hash=self.template.hash, timestamp=utc_now()))
        if a["error"] is not None:
            return rec.with_status("rejected", "magpie:answer_request_failed")
        return rec if a["output"] else rec.with_status("rejected", "magpie:empty_answer")

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        """One record per kept query, in pool order (dropped queries last with --keep-rejected). Stopped
        by a budget: only the queries already answered (the rest are asked for by the re-run)."""
        if self.pool is None:  # stopped before the first query went out
            return {"made": 0, "stopped": ctx.stopped}
        model = ctx.llm.model_id
        answers: Counter[str] = Counter()
        for task in self.pool.tasks:
            if task["task_id"] not in self.answers:
                answers["not_answered"] += 1
                continue
            r = self._record(task, model)
            answers["failed" if r.status == "rejected" else "truncated" if "finish_reason" in r.meta else "ok"] += 1
            ctx.out.write(r)
        for rej in self.pool.rejected:
            ctx.out.write(Record(instruction=rej["instruction"] or "(empty)", status="rejected",
                                 reasons=[f"magpie:{rej['reason']}"],
                                 meta={"magpie": {"request": rej["request"], "detail": rej["detail"]}},
                                 lineage=Lineage(generator="magpie", operation="pre_query", round=0, model=model)))
        return self._details(answers)

    def _details(self, answers: Counter[str]) -> dict[str, Any]:
        pool = self.pool
        dropped = {k: v for k, v in sorted(pool.counts.items()) if k not in ("kept", "not_needed")}
        pq = pool.pre_query(pool.system_for(self._shard()[0])[0])
        return {"target": pool.target, "made": len(pool.tasks), "stopped": self.stopped, "requests": pool.requests,
                "request_errors": pool.request_errors, "queries_cut_at_max_tokens": pool.truncated,
                "queries_kept": pool.counts["kept"], "queries_dropped": dropped,
                "fragments": sum(v for k, v in dropped.items() if k.startswith("fragment:")),
                "answers": dict(answers), "chat_template": self.template.source, "pre_query": pq.prefix,
                "stops": list(pq.stops), "topics": [t for t, _ in pool.topics], "shard": self.cfg.shard}


def run_magpie(input_path, output_path, cfg: MagpieConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments; `input_path` may be None)."""
    from ..stage import run_stage

    return run_stage(MagpieStage, input_path, output_path, cfg, **kwargs)
