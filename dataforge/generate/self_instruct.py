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

Resumable: every finished batch / classification / instance set is journaled to `<out>.partial.jsonl`;
a re-run replays the journal (the pool is rebuilt exactly, so later sampling is identical) and continues.
All randomness comes from `seed`, derived per batch and request, so resumed == uninterrupted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, Field

from ..errors import DataforgeError
from ..progress import progress_bar
from ..records import Lineage, Record, content_id, utc_now
from .instruction_filters import DEFAULT_BLACKLIST, FilterConfig, InstructionFilter, normalize_instruction

JOURNAL_VERSION = 1
GENERATOR = "self_instruct"


class SelfInstructConfig(BaseModel):
    """Options of `dataforge self-instruct` (and of a `self_instruct` pipeline stage)."""

    num_instructions: int = Field(100, ge=1, description="new machine-generated tasks to reach (seeds not counted)")
    variant: Literal["self_instruct", "alpaca"] = Field("self_instruct", description="self_instruct | alpaca")
    seed: int = Field(0, description="seed of every random choice (derived per batch and request)")
    seed_examples: int = Field(6, ge=0, description="in-context instructions from the human seeds per request "
                               "(the Self-Instruct paper uses 6; seeds also fill in while the pool is small)")
    machine_examples: int = Field(2, ge=0, description="in-context instructions from the machine pool per request")
    alpaca_examples: int = Field(3, ge=1, description="alpaca: seed tasks (with input/output) shown per request")
    alpaca_count: int = Field(20, ge=1, description="alpaca: tasks asked for per request")
    requests_per_batch: int = Field(5, ge=1, description="requests sent together; the pool grows between batches")
    temperature: float = Field(0.7, ge=0, description="sampling temperature of the bootstrap requests")
    top_p: float = Field(0.5, gt=0, le=1, description="nucleus sampling of the bootstrap requests")
    max_tokens: Optional[int] = Field(None, ge=8, description="max tokens per bootstrap request (default: 1024 "
                                      "chat / 192 few-shot; alpaca 3072 / 512)")
    max_instances: int = Field(3, ge=1, description="k: instances generated per task at most")
    instance_examples: int = Field(2, ge=0, description="seed tasks shown as worked examples for instances")
    instance_temperature: float = Field(0.0, ge=0, description="sampling temperature for instances")
    instance_max_tokens: Optional[int] = Field(None, ge=8, description="max tokens per instance request "
                                               "(default 512 chat / 160 few-shot)")
    cls_examples: int = Field(8, ge=0, description="seed tasks shown in the classification question")
    min_words: int = Field(3, ge=0, description="an instruction needs more than this many words")
    max_words: int = Field(150, ge=1, description="and at most this many")
    blacklist: list[str] = Field(default_factory=lambda: list(DEFAULT_BLACKLIST),
                                 description="whole-word keywords that drop an instruction")
    banned_prefixes: list[str] = Field(default_factory=lambda: ["Write a program"],
                                       description="instruction openers that drop it")
    rouge_threshold: float = Field(0.7, ge=0, le=1, description="keep iff max ROUGE-L F vs. the pool <= this")
    max_requests: Optional[int] = Field(None, ge=1, description="stop after this many bootstrap requests "
                                        "(default: 20 + 2 x n)")
    patience: int = Field(10, ge=1, description="stop after this many batches in a row without a new task")
    max_in_flight: int = Field(16, ge=1, description="classification/instance requests in flight at once")
    include_seeds: bool = Field(False, description="also write the seed records before the new ones")
    keep_rejected: bool = Field(False, description="also write rejected candidate instructions (status rejected)")
    format: str = Field("auto", description="input format")
    out_format: str = Field("record", description="output format: record | alpaca | chat | parquet")
    strict: bool = Field(False, description="stop at the first bad input line")
    backend: Optional[Any] = Field(None, description="BackendConfig used when no LLM is passed in")

    def fingerprint_fields(self) -> dict[str, Any]:
        """Everything that changes the output (not where the model runs or how progress shows)."""
        return self.model_dump(exclude={"backend", "max_in_flight", "out_format", "strict", "include_seeds",
                                        "num_instructions", "max_requests", "patience"})

    def filter_config(self) -> FilterConfig:
        return FilterConfig(min_words=self.min_words, max_words=self.max_words, blacklist=tuple(self.blacklist),
                            banned_prefixes=tuple(self.banned_prefixes), rouge_threshold=self.rouge_threshold)


# ----------------------------------------------------------------------------------------- parsing

_NUMBERED = re.compile(r"^\s*(?:[-*]\s*)?(?:\*\*)?(?:task\s*)?(\d{1,4})\s*[.):]\s*(?:\*\*)?\s*(.*)$", re.I)
_NOINPUT = {"", "<noinput>", "(none)", "none", "n/a", "no input", "<no input>"}


def _clean_item(text: str) -> str:
    text = normalize_instruction(text)
    text = re.sub(r"^(?:instruction|task)\s*:\s*", "", text, flags=re.I)
    text = text.strip().strip("*").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def parse_numbered_list(text: str, first_number: int | None = None) -> list[str]:
    """Items of a numbered list ("9. ...", "10) ...", "**11.** ...", "Task 12: ..."); lines before the
    first number are preamble, indented/continuation lines extend the current item. `first_number`: the
    prompt itself ended with "N." (few-shot), so the text starts inside item N."""
    if first_number is not None and not _NUMBERED.match(text.lstrip().split("\n", 1)[0]):
        text = f"{first_number}. {text.lstrip()}"
    items: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m:
            if current is not None:
                items.append(" ".join(current))
            current = [m.group(2)]
        elif current is not None:
            if line.strip():
                current.append(line.strip())
            else:
                items.append(" ".join(current))
                current = None
    if current is not None:
        items.append(" ".join(current))
    return [c for c in (_clean_item(i) for i in items) if c]


_ALPACA_TASK = re.compile(r"Instruction\s*:\s*(?P<i>.*?)\s*(?:\n\s*\d+\s*\.\s*)?Input\s*:\s*(?P<x>.*?)\s*"
                          r"(?:\n\s*\d+\s*\.\s*)?Output\s*:\s*(?P<o>.*)", re.S | re.I)


def parse_alpaca_tasks(text: str, first_number: int | None = None) -> list[dict[str, str]]:
    """Tasks of an Alpaca-style reply: blocks separated by ###, each "N. Instruction / N. Input / N. Output"."""
    if first_number is not None and not re.match(r"\s*(?:###\s*)?\d+\s*\.\s*Instruction", text):
        text = f"{first_number}. Instruction: {text.lstrip()}"
    out = []
    for block in re.split(r"^\s*###\s*$|\n\s*###", text, flags=re.M):
        m = _ALPACA_TASK.search(block)
        if not m:
            continue
        inp = m.group("x").strip()
        out.append({"instruction": _clean_item(m.group("i")), "input": "" if inp.lower() in _NOINPUT else inp,
                    "output": m.group("o").strip()})
    return out


_INPUT_FIRST = re.compile(r"Input\s*:[ \t]*(?P<x>.*?)\s*\n?\s*Output\s*:[ \t]*(?P<o>.*?)"
                          r"(?=\n\s*Example\s*\d+|\n\s*Input\s*:|\n\s*Task\s*:|\Z)", re.S | re.I)
_OUTPUT_FIRST = re.compile(r"Class label\s*:[ \t]*(?P<o>.*?)\s*\n\s*Input\s*:[ \t]*(?P<x>.*?)"
                           r"(?=\n\s*Class label\s*:|\n\s*Example\s*\d+|\n\s*Task\s*:|\Z)", re.S | re.I)


def parse_instances(text: str, output_first: bool, prompt_ended_with_field: bool = False) -> list[dict[str, str]]:
    """(input, output) pairs from an instance reply. `prompt_ended_with_field`: a few-shot prompt ended
    with "Input:" / "Class label:", so the reply starts inside that field."""
    if prompt_ended_with_field:
        text = ("Class label:" if output_first else "Input:") + text
    pattern = _OUTPUT_FIRST if output_first else _INPUT_FIRST
    out = []
    for m in pattern.finditer(text):
        inp = m.group("x").strip()
        out.append({"input": "" if inp.lower() in _NOINPUT else inp, "output": m.group("o").strip()})
    return out


def parse_yes_no(text: str) -> bool | None:
    m = re.search(r"\b(yes|no)\b", text, re.I)
    return None if m is None else m.group(1).lower() == "yes"


def filter_instances(instances: list[dict[str, str]]) -> tuple[list[dict[str, str]], Counter]:
    """Self-Instruct's instance post-filters; returns the survivors and the drops by reason."""
    dropped: Counter = Counter()
    outputs_by_input: dict[str, set[str]] = {}
    for inst in instances:
        if inst["input"]:
            outputs_by_input.setdefault(inst["input"], set()).add(inst["output"])
    if any(len(v) > 1 for v in outputs_by_input.values()):
        dropped["conflicting_outputs"] += len(instances)
        return [], dropped
    kept, seen = [], set()
    for inst in instances:
        key = (inst["input"], inst["output"])
        if not inst["output"]:
            dropped["empty_output"] += 1
        elif inst["input"] == inst["output"]:
            dropped["input_equals_output"] += 1
        elif inst["input"].endswith(":") or inst["output"].endswith(":"):
            dropped["incomplete"] += 1
        elif key in seen:
            dropped["duplicate_instance"] += 1
        else:
            seen.add(key)
            kept.append(inst)
    return kept, dropped


# ----------------------------------------------------------------------------------------- seeds


@dataclass
class SeedTask:
    task_id: str
    instruction: str
    is_classification: bool
    instances: list[dict[str, str]] = field(default_factory=list)


def group_seed_tasks(records: list[Record]) -> list[SeedTask]:
    """Flattened seed records back into tasks (by `meta.task_id`, else by instruction), in file order."""
    tasks: dict[str, SeedTask] = {}
    for r in records:
        key = str(r.meta.get("task_id") or "") or f"instr:{r.instruction}"
        task = tasks.get(key)
        if task is None:
            is_cls = bool(r.meta.get("is_classification", r.task == "classification"))
            task = tasks[key] = SeedTask(str(r.meta.get("task_id") or r.id), normalize_instruction(r.instruction),
                                         is_cls)
        if r.output.strip():
            task.instances.append({"input": r.input.strip(), "output": r.output.strip()})
    return list(tasks.values())


def task_id_for(instruction: str) -> str:
    return "si_" + content_id(instruction)[:12]


# ----------------------------------------------------------------------------------------- the run


def journal_path_for(output_path: str | Path) -> Path:
    return Path(f"{output_path}.partial.jsonl")


@contextmanager
def _no_bar() -> Iterator[Any]:
    from ..progress import Bar

    yield Bar(None, None)


async def _gather_or_cancel(coros: list[Any]) -> list[Any]:
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


def run_self_instruct(input_path: str | Path, output_path: str | Path, cfg: SelfInstructConfig | None = None, *,
                      llm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Grow `cfg.num_instructions` new tasks from the seed tasks in `input_path`, write them (one record per
    instance) to `output_path` and return the summary. Re-running after an interruption resumes."""
    from ..llm import run_sync, stage_llm

    cfg = cfg or SelfInstructConfig()
    with stage_llm(llm, cfg.backend) as llm:
        return run_sync(_Run(Path(input_path), Path(output_path), cfg, llm, progress).run())


class _Run:
    """One self-instruct run: state shared by the three stages."""

    def __init__(self, input_path: Path, output_path: Path, cfg: SelfInstructConfig, llm: Any, progress: bool):
        self.input_path, self.output_path, self.cfg, self.llm, self.progress = input_path, output_path, cfg, llm, progress
        self.profile = llm.profile
        self.fewshot = self.profile == "fewshot"
        self.counts: Counter = Counter()  # filter decisions by reason
        self.instance_drops: Counter = Counter()
        self.pool: list[dict[str, Any]] = []  # accepted new tasks, in order
        self.rejected: list[dict[str, Any]] = []
        self.classes: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.requests = 0
        self.request_errors = 0
        self.truncated = 0
        self.batches_done = 0
        self.resumed = Counter()

    # -------------------------------------------------------------- setup

    def _read_seeds(self) -> list[Record]:
        from ..io import ReadStats, RejectSink, read_records, rejects_path_for

        self.read_stats = ReadStats()
        with RejectSink(rejects_path_for(self.output_path)) as sink:
            records = list(read_records(self.input_path, self.cfg.format, rejects=sink, strict=self.cfg.strict,
                                        stats=self.read_stats))
        if not records:
            raise DataforgeError(f"{self.input_path}: no usable seed records")
        return records

    def _fingerprint(self, seeds: list[SeedTask]) -> str:
        material = json.dumps({"cfg": self.cfg.fingerprint_fields(), "seeds": [s.task_id for s in seeds],
                               "model": self.llm.model_id, "profile": self.profile, "v": JOURNAL_VERSION},
                              sort_keys=True, default=str)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()[:24]

    def _replay(self, path: Path, fingerprint: str) -> None:
        from ..io import Journal

        if not path.exists():
            return
        with Journal(path) as j:
            entries = list(j.existing())
        if entries and entries[0].get("header") != fingerprint:
            raise DataforgeError(f"{path}: an unfinished run with different settings, model or seeds left this "
                                 "journal; re-run with the same options to resume it, or delete the file to start over")
        for e in entries[1:]:
            kind = e.get("kind")
            if kind == "batch":
                self._apply_batch(e)
                self.resumed["batches"] += 1
            elif kind == "cls":
                self.classes[e["task_id"]] = e
                self.resumed["classifications"] += 1
            elif kind == "instances":
                self.instances[e["task_id"]] = e
                self.resumed["instance_sets"] += 1

    def _apply_batch(self, e: dict[str, Any], live: bool = False) -> None:
        """Bring the state to 'after batch e'. Live, the filter already put the kept tasks into the novelty
        index; on replay they are added here, in the same order, so both end in the same state."""
        for task in e["kept"]:
            if not live:
                self.filter.add_to_pool(task["instruction"])
            self.pool.append(task)
        self.rejected.extend(e.get("rejected", []))
        self.counts.update(e["counts"])
        self.requests += e["requests"]
        self.request_errors += e.get("errors", 0)
        self.truncated += e.get("truncated", 0)
        self.batches_done = e["batch"] + 1
        self.empty_streak = 0 if e["kept"] else self.empty_streak + 1

    async def run(self) -> dict[str, Any]:
        from ..io import Journal

        t0 = time.time()
        cfg = self.cfg
        records = self._read_seeds()
        self.seed_records = records
        self.seeds = group_seed_tasks(records)
        self.filter = InstructionFilter(cfg.filter_config(), seeds=[s.instruction for s in self.seeds])
        self.empty_streak = 0
        start_tokens = self.llm.usage.total_tokens
        fingerprint = self._fingerprint(self.seeds)
        jpath = journal_path_for(self.output_path)
        self._replay(jpath, fingerprint)
        self.journal = Journal(jpath)
        if not jpath.stat().st_size:
            self.journal.append({"header": fingerprint, "input": str(self.input_path)})
            self.journal.sync()
        try:
            stopped = await self._bootstrap()
            if cfg.variant == "self_instruct":
                await self._classify()
                await self._make_instances()
            written = self._write()
        finally:
            self.journal.close()
        self.journal.remove()
        return self._summary(t0, start_tokens, stopped, written)

    # -------------------------------------------------------------- stage 1: bootstrap

    def _gen_params(self, batch: int, request: int):
        from ..llm import GenParams

        cfg = self.cfg
        alpaca = cfg.variant == "alpaca"
        default = (512 if self.fewshot else 3072) if alpaca else (192 if self.fewshot else 1024)
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
        machine = rng.sample(self.pool, min(cfg.machine_examples, len(self.pool)))
        n_seed = min(cfg.seed_examples + cfg.machine_examples - len(machine), len(self.seeds))
        seeds = rng.sample(self.seeds, n_seed)
        chosen = [(t["task_id"], t["instruction"], None) for t in machine] + [(s.task_id, s.instruction, None) for s in seeds]
        rng.shuffle(chosen)
        return chosen

    def _render_request(self, examples: list[tuple[str, str, Any]]):
        from ..prompts import render

        cfg = self.cfg
        if cfg.variant == "alpaca":
            exs = [{"instruction": ins, "input": inst["input"], "output": inst["output"]} for _, ins, inst in examples]
            return render("si_alpaca", self.profile, examples=exs, count=cfg.alpaca_count)
        exs = [re.sub(r"\s+", " ", ins).strip().rstrip(":") for _, ins, _ in examples]
        return render("si_bootstrap", self.profile, examples=exs, count=8)

    async def _one_request(self, batch: int, request: int) -> dict[str, Any]:
        from ..llm import LLMError

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

    def _bar_status(self, bar: Any) -> None:
        seen = sum(self.counts.values())
        rate = self.counts["kept"] / seen if seen else 0.0
        rejected = Counter({k: v for k, v in self.counts.items() if k not in ("kept", "not_needed")})
        top = ", ".join(f"{k} {v}" for k, v in rejected.most_common(3))
        bar.status(f"pool {len(self.seeds)}+{len(self.pool)} · accept {rate:.0%} · {top}")

    async def _bootstrap(self) -> str:
        cfg = self.cfg
        n = cfg.num_instructions
        max_requests = cfg.max_requests or 20 + 2 * n
        bar_cm = progress_bar(
            "self-instruct", total=n, unit="task") if self.progress else _no_bar()
        with bar_cm as bar:
            bar.advance(len(self.pool))
            self._bar_status(bar)
            while True:
                if len(self.pool) >= n:
                    return "reached target"
                if self.requests >= max_requests:
                    return f"max requests ({max_requests})"
                if self.empty_streak >= cfg.patience:
                    return f"{cfg.patience} batches in a row without a new task"
                batch = self.batches_done
                results = await _gather_or_cancel([self._one_request(batch, r)
                                                   for r in range(cfg.requests_per_batch)])
                entry = self._filter_batch(batch, results)
                before = len(self.pool)
                self.journal.append(entry)
                self.journal.sync()
                self._apply_batch(entry, live=True)
                bar.advance(len(self.pool) - before)
                self._bar_status(bar)

    def _filter_batch(self, batch: int, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Run the filters over the batch's candidates in request order; kept ones join the novelty index
        at once (Self-Instruct's sequential rule), the rest are counted by reason."""
        counts: Counter = Counter()
        kept, rejected = [], []
        room = self.cfg.num_instructions - len(self.pool)
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

    # -------------------------------------------------------------- stage 2: classification

    def _cls_examples(self) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.cfg.seed}:cls")
        yes = [s for s in self.seeds if s.is_classification]
        no = [s for s in self.seeds if not s.is_classification]
        k = self.cfg.cls_examples
        picked = rng.sample(yes, min(len(yes), k // 2)) + rng.sample(no, min(len(no), k - min(len(yes), k // 2)))
        rng.shuffle(picked)
        return [{"instruction": s.instruction, "is_classification": s.is_classification} for s in picked]

    async def _bounded(self, items: list[Any], fn: Any) -> None:
        sem = asyncio.Semaphore(self.cfg.max_in_flight)

        async def one(item: Any) -> None:
            async with sem:
                await fn(item)

        await _gather_or_cancel([one(i) for i in items])
        self.journal.sync()

    async def _classify(self) -> None:
        from ..llm import GenParams, LLMError
        from ..prompts import render

        examples = self._cls_examples()
        todo = [t for t in self.pool if t["task_id"] not in self.classes]
        params = GenParams(temperature=0.0, max_tokens=3, seed=self.cfg.seed)

        async def one(task: dict[str, Any]) -> None:
            prompt = render("si_is_classification", self.profile, examples=examples, task=task["instruction"])
            try:
                text = (await self.llm.generate(prompt, params)).text
                answer = parse_yes_no(text)
            except LLMError:
                text, answer = "", None
            entry = {"kind": "cls", "task_id": task["task_id"], "is_classification": bool(answer),
                     "answer": text.strip()[:40], "unclear": answer is None,
                     "template": prompt.template_id, "template_hash": prompt.hash}
            self.journal.append(entry)
            self.classes[task["task_id"]] = entry
            bar.advance()

        bar_cm = progress_bar(
            "classify", total=len(self.pool), unit="task") if self.progress else _no_bar()
        with bar_cm as bar:
            bar.advance(len(self.pool) - len(todo))
            await self._bounded(todo, one)

    # -------------------------------------------------------------- stage 3: instances

    def _instance_examples(self, task_id: str, is_cls: bool) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.cfg.seed}:instances:{task_id}")
        usable = [s for s in self.seeds if s.instances and s.is_classification == is_cls] or \
                 [s for s in self.seeds if s.instances]
        picked = rng.sample(usable, min(self.cfg.instance_examples, len(usable)))
        return [{"instruction": s.instruction, "instances": s.instances[: self.cfg.max_instances]} for s in picked]

    async def _make_instances(self) -> None:
        from ..llm import GenParams, LLMError
        from ..prompts import render

        cfg = self.cfg
        todo = [t for t in self.pool if t["task_id"] not in self.instances]
        params = GenParams(temperature=cfg.instance_temperature, max_tokens=cfg.instance_max_tokens
                           or (160 if self.fewshot else 512), seed=cfg.seed)

        async def one(task: dict[str, Any]) -> None:
            is_cls = self.classes[task["task_id"]]["is_classification"]
            name = "si_instances_output_first" if is_cls else "si_instances_input_first"
            prompt = render(name, self.profile, examples=self._instance_examples(task["task_id"], is_cls),
                            task=task["instruction"], k=cfg.max_instances)
            try:
                completion = await self.llm.generate(prompt, params)
                raw = parse_instances(completion.text, is_cls, prompt_ended_with_field=self.fewshot)
                error = None
            except LLMError as exc:
                raw, error = [], str(exc)[:300]
            kept, dropped = filter_instances(raw[: cfg.max_instances])
            entry = {"kind": "instances", "task_id": task["task_id"], "instances": kept, "generated": len(raw),
                     "dropped": dict(dropped), "error": error, "template": prompt.template_id,
                     "template_hash": prompt.hash}
            self.journal.append(entry)
            self.instances[task["task_id"]] = entry
            bar.advance()

        bar_cm = progress_bar(
            "instances", total=len(self.pool), unit="task") if self.progress else _no_bar()
        with bar_cm as bar:
            bar.advance(len(self.pool) - len(todo))
            await self._bounded(todo, one)

    # -------------------------------------------------------------- output

    def _records_for(self, task: dict[str, Any]) -> list[Record]:
        cfg = self.cfg
        now = utc_now()
        meta_common = {"task_id": task["task_id"], "variant": cfg.variant}
        lineage = dict(parents=task["parents"], generator=GENERATOR, round=task["batch"], model=self.llm.model_id,
                       template=task["template"], template_hash=task["template_hash"], timestamp=now)
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

    def _write(self) -> Counter:
        from ..io import RecordWriter

        written: Counter = Counter()
        with RecordWriter(self.output_path, self.cfg.out_format) as writer:
            if self.cfg.include_seeds:
                for r in self.seed_records:
                    writer.write(r)
                    written["seed"] += 1
            for task in self.pool:
                recs = self._records_for(task)
                if not recs:
                    written["tasks_without_instances"] += 1
                for r in recs:
                    writer.write(r)
                    written["records"] += 1
                written["tasks"] += bool(recs)
            for rej in self.rejected:
                writer.write(Record(instruction=rej["instruction"], status="rejected",
                                    reasons=[rej["reason"]],
                                    meta={k: rej[k] for k in ("detail", "rouge_l") if rej.get(k) is not None},
                                    lineage=Lineage(generator=GENERATOR, operation="bootstrap", round=rej["batch"],
                                                    parents=rej["parents"], model=self.llm.model_id)))
                written["rejected"] += 1
        return written

    def _summary(self, t0: float, start_tokens: int, stopped: str, written: Counter) -> dict[str, Any]:
        seen = sum(v for k, v in self.counts.items() if k != "not_needed")
        cls = Counter("classification" if c["is_classification"] else "generation"
                      for c in self.classes.values())
        instances = {"generated": sum(e["generated"] for e in self.instances.values()),
                     "kept": sum(len(e["instances"]) for e in self.instances.values())}
        drops: Counter = Counter()
        for e in self.instances.values():
            drops.update(e["dropped"])
        summary = {
            "input": str(self.input_path), "output": str(self.output_path), "variant": self.cfg.variant,
            "model": self.llm.model_id, "profile": self.llm.profile,
            "profile_reason": self.llm.profile_decision.reason,
            "seed_records": len(self.seed_records), "seed_tasks": len(self.seeds),
            "bad_input_lines": self.read_stats.bad,
            "new_tasks": len(self.pool), "target": self.cfg.num_instructions, "stopped": stopped,
            "requests": self.requests, "request_errors": self.request_errors, "truncated_replies": self.truncated,
            "candidates": seen, "acceptance_rate": round(self.counts["kept"] / seen, 4) if seen else 0.0,
            "rejected_by_reason": {k: v for k, v in sorted(self.counts.items()) if k not in ("kept", "not_needed")},
            "records_written": written["records"], "tasks_written": written["tasks"],
            "tasks_without_instances": written["tasks_without_instances"],
            "tokens": self.llm.usage.total_tokens - start_tokens,
            "resumed": dict(self.resumed), "wall_seconds": round(time.time() - t0, 2),
        }
        if self.cfg.variant == "self_instruct":
            summary["task_types"] = dict(cls)
            summary["classification_unclear"] = sum(1 for c in self.classes.values() if c.get("unclear"))
            summary["instances"] = {**instances, "dropped_by_reason": dict(drops)}
        if self.cfg.include_seeds:
            summary["seed_records_written"] = written["seed"]
        if self.cfg.keep_rejected:
            summary["rejected_written"] = written["rejected"]
        return summary
