"""Self-Instruct: grow a pool of new tasks from human seed tasks (and the Alpaca variant).

The Self-Instruct recipe, stage by stage:

1. **Bootstrap** in request batches. Each request shows 8 in-context instructions - 2 sampled from the
   machine-made pool (fewer while it is small) and the rest from the human seeds - shuffled, and asks
   for more in a numbered list. Candidates go through the filters of `instruction_filters` (length,
   keyword blacklist, "Write a program", punctuation/non-ASCII start, ROUGE-L novelty <= 0.7 against
   seeds + pool) one by one in a fixed order; kept ones join the pool at once. Stops at `n` new tasks.
2. **Classification identification**: a few-shot Yes/No question per new task (examples from the seeds).
3. **Instance generation**: output-first for classification tasks (class label, then an input with that
   label, so labels are not all the same), input-first otherwise; up to `k` instances per task, then the
   original post-filters (conflicting outputs for one input drop the task's instances; duplicates,
   input == output, empty outputs and colon-ended fragments are dropped).

Alpaca variant (`variant="alpaca"`): each request shows 3 seed tasks *with* input and output and asks
for 20 complete tasks at once; no separate classification or instance stage.

Output: one Record per instance (instances are flattened, like `read_records` does for seed files), in
pool order. Instances of one task share `meta.task_id`; `task` is "classification" or "generation";
`meta.is_classification`; lineage: generator "self_instruct", operation "bootstrap"/"alpaca", round =
request batch index, parents = task ids of the in-context examples, template + hash of the bootstrap
prompt, and `history` with the classification and instance steps (template, hash). Status "pending": the
quality gate decides.

Resumable: every finished batch / classification / instance set is journaled (`dataforge.stage` keeps
the journal); a re-run replays it (the pool is rebuilt exactly, so later sampling is identical) and
continues. All randomness comes from `seed`, derived per batch and request, so resumed == uninterrupted.
The bootstrap is `self_instruct_pool.py`, the text parsing `self_instruct_parse.py`.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Annotated, Any, Awaitable, Callable, Iterator, Literal, Optional

from pydantic import Field

from ..records import Lineage, Record, utc_now
from ..stage import Cli, IOConfig, Stage, StageContext
from .instruction_filters import DEFAULT_BLACKLIST, FilterConfig
from .self_instruct_parse import (SeedTask, filter_instances, group_seed_tasks, parse_alpaca_tasks,
                                  parse_instances, parse_numbered_list, parse_yes_no, task_id_for)

__all__ = ["SelfInstructConfig", "SelfInstructStage", "run_self_instruct", "SeedTask", "filter_instances",
           "group_seed_tasks", "parse_alpaca_tasks", "parse_instances", "parse_numbered_list", "parse_yes_no",
           "task_id_for"]
GENERATOR = "self_instruct"
# default max tokens of one bootstrap request (by variant and prompt profile) and of one instance request
BOOTSTRAP_TOKENS = {"self_instruct": {"chat": 1024, "fewshot": 192}, "alpaca": {"chat": 3072, "fewshot": 512}}
INSTANCE_TOKENS = {"chat": 512, "fewshot": 160}
_G, _F = "Generation", "Filters"


def _budget(tokens: dict[str, int]) -> str:
    return f"{tokens['chat']} chat / {tokens['fewshot']} few-shot"


class SelfInstructConfig(IOConfig):
    """Options of `dataforge self-instruct` (and of a `self-instruct` pipeline stage)."""

    num_instructions: Annotated[int, Cli("-n", "--num-instructions", panel=_G)] = Field(
        100, ge=1, description="new machine-generated tasks to reach (seeds not counted)")
    variant: Annotated[Literal["self_instruct", "alpaca"], Cli(panel=_G)] = Field(
        "self_instruct", description="self_instruct, or alpaca (20 complete tasks per request)")
    seed: int = Field(0, description="seed of every random choice (derived per batch and request)")
    seed_examples: Annotated[int, Cli(panel=_G)] = Field(
        6, ge=0, description="in-context instructions from the human seeds per request (the Self-Instruct paper "
        "uses 6; seeds also fill in while the pool is small)")
    machine_examples: Annotated[int, Cli(panel=_G)] = Field(
        2, ge=0, description="in-context instructions from the machine pool per request")
    alpaca_examples: Annotated[int, Cli(panel=_G)] = Field(
        3, ge=1, description="alpaca: seed tasks (with input/output) shown per request")
    alpaca_count: Annotated[int, Cli(panel=_G)] = Field(20, ge=1, description="alpaca: tasks asked for per request")
    requests_per_batch: Annotated[int, Cli("--batch", panel=_G)] = Field(
        5, ge=1, description="requests sent together; the pool grows between batches")
    temperature: Annotated[float, Cli(panel=_G)] = Field(
        0.7, ge=0, description="sampling temperature of the bootstrap requests")
    top_p: Annotated[float, Cli(panel=_G)] = Field(
        0.5, gt=0, le=1, description="nucleus sampling of the bootstrap requests")
    max_tokens: Annotated[Optional[int], Cli(panel=_G, default_text=f"{_budget(BOOTSTRAP_TOKENS['self_instruct'])}; "
                                             f"alpaca {_budget(BOOTSTRAP_TOKENS['alpaca'])}")] = Field(
        None, ge=8, description="max tokens per bootstrap request")
    max_instances: Annotated[int, Cli("-k", "--instances", panel=_G)] = Field(
        3, ge=1, description="k: instances generated per task at most")
    instance_examples: Annotated[int, Cli(panel=_G)] = Field(
        2, ge=0, description="seed tasks shown as worked examples for instances")
    instance_temperature: Annotated[float, Cli(panel=_G)] = Field(
        0.0, ge=0, description="sampling temperature for instances")
    instance_max_tokens: Annotated[Optional[int], Cli(panel=_G, default_text=_budget(INSTANCE_TOKENS))] = Field(
        None, ge=8, description="max tokens per instance request")
    cls_examples: Annotated[int, Cli(panel=_G)] = Field(
        8, ge=0, description="seed tasks shown in the classification question")
    min_words: Annotated[int, Cli(panel=_F)] = Field(3, ge=0, description="an instruction needs more than this many words")
    max_words: Annotated[int, Cli(panel=_F)] = Field(150, ge=1, description="and at most this many")
    blacklist: Annotated[list[str], Cli(panel=_F, metavar="WORD,WORD,...")] = Field(
        default_factory=lambda: list(DEFAULT_BLACKLIST), description="whole-word keywords that drop an instruction")
    banned_prefixes: Annotated[list[str], Cli(panel=_F, metavar="TEXT,TEXT,...")] = Field(
        default_factory=lambda: ["Write a program"], description="instruction openers that drop it")
    rouge_threshold: Annotated[float, Cli(panel=_F)] = Field(
        0.7, ge=0, le=1, description="keep iff max ROUGE-L F vs. the pool <= this")
    max_requests: Annotated[Optional[int], Cli(panel=_G, default_text="20 + 2 x n")] = Field(
        None, ge=1, description="stop after this many bootstrap requests")
    patience: Annotated[int, Cli(panel=_G)] = Field(
        10, ge=1, description="stop after this many batches in a row without a new task")
    max_in_flight: Annotated[int, Cli(panel=_G)] = Field(
        16, ge=1, description="classification/instance requests in flight at once")
    include_seeds: Annotated[bool, Cli(panel=_G)] = Field(False, description="also write the seed records first")
    keep_rejected: Annotated[bool, Cli(panel=_G)] = Field(
        False, description="also write rejected candidate instructions (status rejected, with the reason)")

    def filter_config(self) -> FilterConfig:
        return FilterConfig(min_words=self.min_words, max_words=self.max_words, blacklist=tuple(self.blacklist),
                            banned_prefixes=tuple(self.banned_prefixes), rouge_threshold=self.rouge_threshold)


class SelfInstructStage(Stage[SelfInstructConfig]):
    """Bootstrap new tasks from seed tasks as Self-Instruct does: sample 6 seed + 2 generated instructions
    per request, filter candidates (length, keywords, ROUGE-L novelty <= 0.7), identify classification
    tasks, generate instances."""

    name = "self-instruct"
    Config = SelfInstructConfig
    # a larger -n (or request limit, or patience) resumes the same pool: they only say when to stop
    output_neutral = frozenset({"max_in_flight", "out_format", "strict", "include_seeds", "num_instructions",
                                "max_requests", "patience"})
    partial_output = True  # stopped by a budget, it writes the tasks whose every step is done

    def __init__(self, cfg: SelfInstructConfig):
        super().__init__(cfg)
        self.seed_records: list[Record] = []
        self.seeds: list[SeedTask] = []
        self.pool: Any = None  # the TaskPool
        self.classes: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.resumed: Counter[str] = Counter()
        self.stopped = ""

    def needs_llm(self) -> bool:
        return True

    def sample_plan(self, n_input: int):
        """A dry run does one bootstrap batch over all the seeds (and the classification and instances of
        what it kept); the job is -n / (tasks the batch kept) times larger."""
        from ..stage.estimate import SamplePlan

        cfg = self.cfg.model_copy(update={"max_requests": self.cfg.requests_per_batch, "keep_rejected": False})
        return SamplePlan(cfg, n_input, None, f"one bootstrap batch of {self.cfg.requests_per_batch} requests "
                          f"(the job: {self.cfg.num_instructions:,} new tasks)")

    def sample_scale(self, summary: Any, n_input: int) -> float | None:
        made = int(summary.details.get("new_tasks") or 0)
        return self.cfg.num_instructions / made if made else None

    def parallel_requests(self, n_input: int) -> int:
        return max(1, min(self.cfg.max_in_flight, self.cfg.num_instructions))

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        from .self_instruct_pool import TaskPool

        self.seed_records = list(records)
        self.seeds = group_seed_tasks(self.seed_records)
        pool = self.pool = TaskPool(self.cfg, self.seeds, ctx.llm)
        for e in ctx.journal.entries:  # replay: the pool, classes and instances an earlier run finished
            kind = e.get("kind")
            if kind == "batch":
                pool.apply_batch(e)
            else:
                (self.classes if kind == "cls" else self.instances)[e["task_id"]] = e
            self.resumed[{"batch": "batches", "cls": "classifications"}.get(kind, "instance_sets")] += 1
        with ctx.bar("self-instruct", total=self.cfg.num_instructions, unit="task") as bar:
            self.stopped = await pool.grow(ctx.journal, bar)
        if self.cfg.variant == "self_instruct":
            await self._each_task(ctx, "classify", self.classes, self._classify_one())
            await self._each_task(ctx, "instances", self.instances, self._instances_one())

    async def _each_task(self, ctx: StageContext, what: str, done: dict[str, dict[str, Any]],
                         ask: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        """One request per pool task not yet in `done`, `max_in_flight` at a time; each answer is journaled."""
        await self.pool.each_task(ctx, what, done, ask, self.cfg.max_in_flight)

    def _classify_one(self) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        """Stage 2: a few-shot Yes/No question per task, with seed tasks as examples."""
        from ..llm import GenParams, LLMError
        from ..prompts import render

        rng = random.Random(f"{self.cfg.seed}:cls")
        yes = [s for s in self.seeds if s.is_classification]
        no = [s for s in self.seeds if not s.is_classification]
        k = self.cfg.cls_examples
        picked = rng.sample(yes, min(len(yes), k // 2)) + rng.sample(no, min(len(no), k - min(len(yes), k // 2)))
        rng.shuffle(picked)
        examples = [{"instruction": s.instruction, "is_classification": s.is_classification} for s in picked]
        params = GenParams(temperature=0.0, max_tokens=3, seed=self.cfg.seed)

        async def ask(task: dict[str, Any]) -> dict[str, Any]:
            prompt = render("si_is_classification", self.pool.llm.profile, examples=examples, task=task["instruction"])
            try:
                text = (await self.pool.llm.generate(prompt, params)).text
                answer = parse_yes_no(text)
            except LLMError:
                text, answer = "", None
            return {"kind": "cls", "task_id": task["task_id"], "is_classification": bool(answer),
                    "answer": text.strip()[:40], "unclear": answer is None,
                    "template": prompt.template_id, "template_hash": prompt.hash}
        return ask

    def _instance_examples(self, task_id: str, is_cls: bool) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.cfg.seed}:instances:{task_id}")
        usable = [s for s in self.seeds if s.instances and s.is_classification == is_cls] or \
                 [s for s in self.seeds if s.instances]
        picked = rng.sample(usable, min(self.cfg.instance_examples, len(usable)))
        return [{"instruction": s.instruction, "instances": s.instances[: self.cfg.max_instances]} for s in picked]

    def _instances_one(self) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        """Stage 3: output-first instances for classification tasks, input-first otherwise, post-filtered."""
        from ..llm import GenParams, LLMError
        from ..prompts import render

        cfg, llm = self.cfg, self.pool.llm
        fewshot = llm.profile == "fewshot"
        params = GenParams(temperature=cfg.instance_temperature, seed=cfg.seed,
                           max_tokens=cfg.instance_max_tokens or INSTANCE_TOKENS["fewshot" if fewshot else "chat"])

        async def ask(task: dict[str, Any]) -> dict[str, Any]:
            is_cls = self.classes[task["task_id"]]["is_classification"]
            name = "si_instances_output_first" if is_cls else "si_instances_input_first"
            prompt = render(name, llm.profile, examples=self._instance_examples(task["task_id"], is_cls),
                            task=task["instruction"], k=cfg.max_instances)
            try:
                completion = await llm.generate(prompt, params)
                raw = parse_instances(completion.text, is_cls, prompt_ended_with_field=fewshot)
                error = None
            except LLMError as exc:
                raw, error = [], str(exc)[:300]
            kept, dropped = filter_instances(raw[: cfg.max_instances])
            return {"kind": "instances", "task_id": task["task_id"], "instances": kept, "generated": len(raw),
                    "dropped": dict(dropped), "error": error, "template": prompt.template_id,
                    "template_hash": prompt.hash}
        return ask

    def _records_for(self, task: dict[str, Any], model: str) -> list[Record]:
        cfg = self.cfg
        meta_common = {"task_id": task["task_id"], "variant": cfg.variant}
        lineage = dict(parents=task["parents"], generator=GENERATOR, round=task["batch"], model=model,
                       template=task["template"], template_hash=task["template_hash"], timestamp=utc_now())
        if cfg.variant == "alpaca":
            return [Record(instruction=task["instruction"], input=task["input"], output=task["output"],
                           meta={**meta_common, "is_classification": None, "instance": 0},
                           lineage=Lineage(operation="alpaca", **lineage))]
        cls = self.classes[task["task_id"]]
        inst = self.instances[task["task_id"]]
        history = [{"step": "classify", "template": cls["template"], "template_hash": cls["template_hash"],
                    "answer": cls["answer"]},
                   {"step": "instances", "template": inst["template"], "template_hash": inst["template_hash"],
                    "generated": inst["generated"], "dropped": inst["dropped"]}]
        is_cls = cls["is_classification"]
        return [Record(instruction=task["instruction"], input=i["input"], output=i["output"],
                       task="classification" if is_cls else "generation",
                       meta={**meta_common, "is_classification": is_cls, "instance": n},
                       lineage=Lineage(operation="bootstrap", history=history, **lineage))
                for n, i in enumerate(inst["instances"])]

    def _complete(self, task: dict[str, Any]) -> bool:
        return self.cfg.variant == "alpaca" or (task["task_id"] in self.classes and task["task_id"] in self.instances)

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        """One record per instance, in pool order (seeds first with --include-seeds, rejected candidates
        last with --keep-rejected). Stopped early (a budget): the tasks whose every step is done."""
        model = ctx.llm.model_id
        written: Counter[str] = Counter()
        if self.cfg.include_seeds:
            for r in self.seed_records:
                ctx.out.write(r)
        for task in self.pool.tasks:
            if ctx.stopped and not self._complete(task):
                written["tasks_not_done"] += 1
                continue
            recs = self._records_for(task, model)
            for r in recs:
                ctx.out.write(r)
            written["tasks" if recs else "tasks_without_instances"] += 1
        for rej in self.pool.rejected:
            ctx.out.write(Record(instruction=rej["instruction"], status="rejected", reasons=[rej["reason"]],
                                 meta={k: rej[k] for k in ("detail", "rouge_l") if rej.get(k) is not None},
                                 lineage=Lineage(generator=GENERATOR, operation="bootstrap", round=rej["batch"],
                                                 parents=rej["parents"], model=model)))
        return self._details(written)

    def _details(self, written: Counter[str]) -> dict[str, Any]:
        pool = self.pool
        seen = sum(v for k, v in pool.counts.items() if k != "not_needed")
        details: dict[str, Any] = {
            "variant": self.cfg.variant, "seed_tasks": len(self.seeds),
            "new_tasks": len(pool.tasks), "target": self.cfg.num_instructions, "stopped": self.stopped,
            "requests": pool.requests, "request_errors": pool.request_errors, "truncated_replies": pool.truncated,
            "candidates": seen, "acceptance_rate": round(pool.counts["kept"] / seen, 4) if seen else 0.0,
            "rejected_by_reason": {k: v for k, v in sorted(pool.counts.items()) if k not in ("kept", "not_needed")},
            "tasks_written": written["tasks"], "tasks_without_instances": written["tasks_without_instances"],
            "tasks_not_done": written["tasks_not_done"],
            "resumed_by_kind": dict(self.resumed),
        }
        if self.cfg.variant == "self_instruct":
            drops: Counter = Counter()
            for e in self.instances.values():
                drops.update(e["dropped"])
            details["task_types"] = dict(Counter("classification" if c["is_classification"] else "generation"
                                                 for c in self.classes.values()))
            details["classification_unclear"] = sum(1 for c in self.classes.values() if c.get("unclear"))
            details["instances"] = {"generated": sum(e["generated"] for e in self.instances.values()),
                                    "kept": sum(len(e["instances"]) for e in self.instances.values()),
                                    "dropped_by_reason": dict(drops)}
        return details


def run_self_instruct(input_path, output_path, cfg: SelfInstructConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(SelfInstructStage, input_path, output_path, cfg, **kwargs)
