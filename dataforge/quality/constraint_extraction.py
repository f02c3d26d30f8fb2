"""Model-based constraint extraction: a capable chat model lists the verifiable constraints of an
instruction as library specs, through structured output whose JSON schema is built from the registered
types; the result is merged with what the parser found (the union), and where the two disagree the
record's reasons say so.

Why both: the parser is fast, exact on the phrasings it knows and measured (README), but people
phrase constraints without end; a capable model reads the ones the patterns miss. Neither is trusted
alone: a constraint found by one side only is still checked, and the disagreement is noted, so a
reviewer sees which detection sent a record to review. The embedded 135M model is not asked: it
cannot do this task, and its answers would only add false detections.

    extractor = ConstraintExtractor(llm)
    found = await extractor.extract("Answer in under 50 words. What is DNS?")
    specs, notes = merge(parse_constraints(text), found.specs)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..constraints import CONSTRAINTS, phrase
from ..constraints.params import params_model, schema_model
from ..llm.base import LLM, GenParams, LLMError
from ..prompts import render
from .constraint_scoring import spec_key

Spec = dict[str, Any]
NOTE = "constraint_extraction"


def catalogue() -> list[dict[str, str]]:
    """The registered types as the prompt lists them: name, summary, and the params' fields."""
    return [dict(t) for t in _catalogue(tuple(sorted(CONSTRAINTS)))]


@lru_cache(maxsize=4)
def _catalogue(names: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    out = []
    for name in names:
        fields = params_model(name).model_json_schema().get("properties", {})
        desc = ", ".join(f"{k}: {_short_type(v)}" for k, v in fields.items()) or "none"
        out.append({"name": name, "summary": CONSTRAINTS[name].summary, "params": "{" + desc + "}"})
    return tuple(out)


def _short_type(prop: dict) -> str:
    if "enum" in prop:
        vals = prop["enum"]
        return "|".join(vals) if len(vals) <= 6 else "ISO 639-1 code"
    if "anyOf" in prop:
        return " or ".join(_short_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return "list of " + _short_type(prop.get("items", {}))
    if "const" in prop:
        return repr(prop["const"])
    return prop.get("type", "value")


@dataclass
class Extraction:
    """What the model listed (`specs`), or why nothing usable came back (`error`)."""

    specs: list[Spec] | None
    error: str | None = None


@dataclass
class ConstraintExtractor:
    """Asks `llm` (a chat model) for the constraints of instructions; counts requests and failures."""

    llm: LLM
    seed: int = 0
    max_tokens: int = 600
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.llm.profile != "chat":
            raise ValueError("model-based constraint extraction needs a chat model; "
                             f"{self.llm.model_id} runs the {self.llm.profile!r} profile")

    async def extract(self, instruction: str) -> Extraction:
        from ..llm.structured import generate_structured

        prompt = render("extract_constraints", "chat", instruction=instruction, types=catalogue())
        params = GenParams(temperature=0.0, max_tokens=self.max_tokens, seed=self.seed)
        self.requests += 1
        try:
            res = await generate_structured(self.llm, prompt, schema_model(), params, max_repairs=1)
        except LLMError as exc:
            return self._failed("request_failed", str(exc))
        if not res.ok:
            return self._failed(res.reason or "unreadable", res.error or "")
        specs = []
        for item in res.value.constraints:  # type: ignore[union-attr]
            p = item.params.model_dump(exclude_none=True)
            spec: Spec = {"type": item.type, "params": p}
            try:
                spec["phrase"] = phrase(spec)
            except Exception as exc:  # valid JSON, but params the type cannot use
                return self._failed("bad_params", f"{item.type}: {exc}")
            specs.append(spec)
        return Extraction(specs)

    def _failed(self, reason: str, error: str) -> Extraction:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        return Extraction(None, f"{reason}: {error}"[:300])


def describe(spec: Spec) -> str:
    p = {k: v for k, v in (spec.get("params") or {}).items() if k != "form"}
    return f"{spec['type']}({json.dumps(p, ensure_ascii=False, sort_keys=True)})" if p else spec["type"]


def merge(parser_specs: list[Spec], model_specs: list[Spec] | None) -> tuple[list[Spec], list[str]]:
    """The union of both lists (each constraint once), and one note per constraint only one side found.
    `model_specs` None (the model was not asked, or failed) leaves the parser's list as it is."""
    if model_specs is None:
        return list(parser_specs), []
    seen = {spec_key(s): s for s in parser_specs}
    model_keys = {spec_key(s) for s in model_specs}
    merged = list(parser_specs)
    notes = [f"{NOTE}:parser_only:{describe(s)}" for k, s in seen.items() if k not in model_keys]
    for s in model_specs:
        k = spec_key(s)
        if k not in seen:
            seen[k] = s
            merged.append(s)
            notes.append(f"{NOTE}:model_only:{describe(s)}")
    return merged, notes
