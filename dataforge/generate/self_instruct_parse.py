"""Self-Instruct's text handling: reading a model's numbered task lists, Alpaca task blocks, instance
replies and Yes/No answers; the original instance post-filters; seed tasks from flattened records.
Pure functions: everything the stage (`self_instruct.py`) needs from a reply or the seeds."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from ..records import Record, content_id
from .instruction_filters import normalize_instruction

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
