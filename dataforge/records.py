"""The Record: the one contract between every stage and the JSONL on disk.

Every stage reads Records and returns new Records (``model_copy(update=...)``);
nothing mutates its input. Unknown keys are refused so that a typo in a
hand-written file is a clear validation error rather than silently lost data;
readers of outside formats put foreign keys into ``meta``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

Status = Literal["accepted", "review", "rejected", "pending"]
STATUSES: tuple[str, ...] = ("accepted", "review", "rejected", "pending")


_ID_ENCODER = json.JSONEncoder(ensure_ascii=False)  # made once: json.dumps builds one per call


def content_id(instruction: str, input: str = "", output: str = "", *more: Any) -> str:
    """Stable 16-hex id from the text of a record (same text -> same id, any machine). `more`: the text of a
    conversation's later turns or a preference pair's rejected answer (absent for a plain record, whose id
    is therefore what it always was)."""
    payload = _ID_ENCODER.encode([instruction, input, output, *more])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Lineage(BaseModel):
    """Where a record came from, enough to reproduce or audit it."""

    model_config = ConfigDict(extra="forbid")

    parents: list[str] = Field(default_factory=list, description="ids of the records this one was made from")
    root: str | None = Field(None, description="id of the original seed at the root of the evolution tree")
    generator: str | None = Field(None, description="what made it: seed, import, self_instruct, evolve, refine, ...")
    operation: str | None = Field(None, description="operation of the generator, e.g. evol operation 'deepen'")
    round: int | None = Field(None, description="generation/evolution round (0 = seed)")
    model: str | None = Field(None, description="backend:model that produced the text")
    template: str | None = Field(None, description="prompt template name used to make it")
    template_hash: str | None = Field(None, description="content hash of that template (first 12 hex of sha256)")
    timestamp: str | None = Field(None, description="UTC ISO time the record was made")
    history: list[dict[str, Any]] = Field(
        default_factory=list,
        description="earlier drafts, critiques and refinements (Self-Refine), oldest first",
    )


def _drop_empty(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    for k in keys:
        if data.get(k) in (None, [], {}):
            data.pop(k, None)
    return data


class Turn(BaseModel):
    """One message of a conversation after its first exchange (which is the record's instruction/input and
    output). User and assistant turns alternate, user first; `dataforge converse` writes them."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"] = Field(..., description="who speaks")
    content: str = Field(..., description="the message text")
    style: str | None = Field(None, description="user turns a model wrote: the follow-up style asked for "
                                                "(clarify, deeper, constraint, challenge)")
    constraints: list[dict[str, Any]] = Field(
        default_factory=list, description="user turns: verifiable constraints the next answer must meet "
                                          "(same spec as meta.constraints)")
    scores: dict[str, float] = Field(default_factory=dict, description="assistant turns: the gate's check scores")

    @model_serializer(mode="wrap")
    def _compact(self, handler: Any) -> dict[str, Any]:
        return _drop_empty(handler(self), ("style", "constraints", "scores"))


class Preference(BaseModel):
    """A preference pair's other side: the record's `output` is the chosen answer, this the rejected one,
    with the scores that ranked them (`dataforge pairs` writes them; `dataforge train --objective dpo` reads them)."""

    model_config = ConfigDict(extra="forbid")

    rejected: str = Field(..., description="the rejected answer to the same prompt")
    kind: Literal["verifiable", "scored", "imported"] = Field(
        ..., description="verifiable: the chosen answer meets every attached constraint and the rejected one "
                         "fails at least one; scored: ranked by the gate's checks; imported: read from "
                         "an outside preference file")
    chosen_score: float | None = Field(None, description="the chosen answer's score (share of gate checks passed)")
    rejected_score: float | None = Field(None, description="the rejected answer's score")
    reason: str = Field("", description="why the chosen answer ranks above the rejected one")
    chosen_temperature: float | None = Field(None, description="sampling temperature of the chosen answer")
    rejected_temperature: float | None = Field(None, description="sampling temperature of the rejected answer")


class Record(BaseModel):
    """One instruction-tuning example and everything dataforge learned about it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    id: str = Field("", description="stable content hash of instruction/input/output unless given")
    instruction: str = Field(..., description="the task the model is asked to do")
    input: str = Field("", description="optional context the instruction refers to (may be empty)")
    output: str = Field("", description="the response; empty until a generator answers it")
    task: str | None = Field(None, description="task category label (classification, math, code, ...); "
                                               "drives the trainer's multi-task loss")
    complexity: float | None = Field(None, description="complexity score 1-10 (gate) or level")
    topic: str | None = Field(None, description="topic cluster label assigned by curation")
    scores: dict[str, float] = Field(default_factory=dict, description="named check scores, e.g. coherence")
    status: Status = Field("pending", description="accepted | review | rejected | pending")
    reasons: list[str] = Field(default_factory=list, description="why the status is what it is")
    lineage: Lineage = Field(default_factory=Lineage, description="provenance of the record")
    meta: dict[str, Any] = Field(default_factory=dict, description="anything else: source, constraints, ...")
    turns: list[Turn] = Field(default_factory=list, description="a conversation's later turns, after the first "
                                                               "exchange: user and assistant alternating, user first")
    preference: Preference | None = Field(None, description="a preference pair: the rejected answer and the "
                                                            "ranking (`output` is the chosen one)")

    @model_validator(mode="after")
    def _fill_id(self) -> "Record":
        if self.turns:
            roles = [t.role for t in self.turns]
            if roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
                raise ValueError("turns must alternate user, assistant, ... starting with user and ending with "
                                 f"assistant (got {', '.join(roles)})")
        if not self.id:
            more: list[Any] = [[[t.role, t.content] for t in self.turns]] if self.turns else []
            if self.preference is not None:
                more.append(self.preference.rejected)
            self.id = content_id(self.instruction, self.input, self.output, *more)
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: Any) -> dict[str, Any]:
        """A single-turn record without a preference is written exactly as before these fields existed."""
        return _drop_empty(handler(self), ("turns", "preference"))

    @property
    def assistant_turns(self) -> int:
        """How many answers the record holds: the first exchange's (when there is one) plus later ones."""
        return int(bool(self.output)) + sum(1 for t in self.turns if t.role == "assistant")

    def messages(self, system: str | None = None) -> list[dict[str, str]]:
        """The whole conversation as chat messages (the input folded into the first user turn)."""
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": self.prompt_text}, {"role": "assistant", "content": self.output},
                *({"role": t.role, "content": t.content} for t in self.turns)]

    @property
    def prompt_text(self) -> str:
        """Instruction plus input, the text that embeddings and judges look at."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    def with_status(self, status: Status, *reasons: str) -> "Record":
        """A copy with a new status and the reasons appended (never drops earlier reasons)."""
        return self.model_copy(update={"status": status, "reasons": [*self.reasons, *reasons]})

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)
