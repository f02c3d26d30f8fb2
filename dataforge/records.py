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

from pydantic import BaseModel, ConfigDict, Field, model_validator

Status = Literal["accepted", "review", "rejected", "pending"]
STATUSES: tuple[str, ...] = ("accepted", "review", "rejected", "pending")


def content_id(instruction: str, input: str = "", output: str = "") -> str:
    """Stable 16-hex id from the text of a record (same text -> same id, any machine)."""
    payload = json.dumps([instruction, input, output], ensure_ascii=False)
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

    @model_validator(mode="after")
    def _fill_id(self) -> "Record":
        if not self.id:
            self.id = content_id(self.instruction, self.input, self.output)
        return self

    @property
    def prompt_text(self) -> str:
        """Instruction plus input, the text that embeddings and judges look at."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    def with_status(self, status: Status, *reasons: str) -> "Record":
        """A copy with a new status and the reasons appended (never drops earlier reasons)."""
        return self.model_copy(update={"status": status, "reasons": [*self.reasons, *reasons]})

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)
