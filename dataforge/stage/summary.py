"""`StageSummary`: what every stage reports, in one shape.

Stage-specific facts (rounds, dedup counts, topic plans, ...) go under `details`; everything a user or
a pipeline compares across stages has a fixed name here. To report something new for every stage
(like the cost per operation), add a field here, fill it in `runner`, and every command, the pipeline
manifest and `--json` carry it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Tokens(BaseModel):
    """Model requests a stage made and the tokens they cost (cached answers cost none)."""

    prompt: int = 0
    completion: int = 0
    requests: int = 0
    cached: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def add(self, other: "Tokens") -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {**self.model_dump(), "total": self.total}


class StageSummary(BaseModel):
    """One stage run: records in, records out by status, what was set aside, and what it cost."""

    model_config = ConfigDict(populate_by_name=True)

    stage: str
    input: str
    output: str
    records_in: int = Field(0, alias="in", description="records read (after --shard)")
    out: dict[str, int] = Field(default_factory=dict, description="records written, by status, all files")
    files: dict[str, str] = Field(default_factory=dict, description="where records went: output, rejected, ...")
    bad_lines: int = Field(0, description="input items that were not records (see files.bad_lines)")
    bad_by_reason: dict[str, int] = Field(default_factory=dict)
    resumed: int = Field(0, description="journal entries of an earlier, unfinished run that were reused")
    model: str | None = None
    profile: str | None = None
    profile_reason: str | None = Field(None, description="why the model got that prompt profile")
    tokens: Tokens = Field(default_factory=Tokens)
    tokens_by_operation: dict[str, Tokens] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict, description="failed model requests by cause")
    seconds_per_request: float | None = Field(None, description="median time of a request sent (cache hits aside)")
    cost_usd: float | None = Field(None, description="what the requests cost at the prices given (None: no prices)")
    cost_by_operation: dict[str, float] = Field(default_factory=dict)
    budget: dict[str, Any] | None = Field(None, description="limits, what the job spent in all, why it stopped")
    stopped: str | None = Field(None, description="why the run stopped before its end (a budget); None: finished")
    wall_s: float = 0.0
    details: dict[str, Any] = Field(default_factory=dict, description="what only this stage knows")

    @property
    def produced(self) -> int:
        """Records written that are not rejected."""
        return sum(n for status, n in self.out.items() if status != "rejected")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the short names users see (``in``, ``tokens.total``)."""
        d = self.model_dump(by_alias=True, mode="json")
        d["tokens"] = self.tokens.as_dict()
        d["tokens_by_operation"] = {k: v.as_dict() for k, v in self.tokens_by_operation.items()}
        return d
