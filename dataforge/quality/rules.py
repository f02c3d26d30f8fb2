"""The gate's decision rules: thresholds and actions from YAML (`default_gate.yaml` merged with the
user's `--config`), and the function that turns a record's scores into a status with reasons."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import DataforgeError

DEFAULT_RULES_PATH = Path(__file__).with_name("default_gate.yaml")
Action = Literal["review", "reject"]
_RANK = {"accepted": 0, "review": 1, "rejected": 2}


class CheckRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None
    on_fail: Action = "review"

    def fails(self, score: float | None) -> bool:
        if score is None:
            return False
        return (self.min is not None and score < self.min) or (self.max is not None and score > self.max)


class RefineRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(2, ge=0)
    checks: list[str] = Field(default_factory=lambda: ["coherence", "alignment", "format", "truncation"])


class HighStakes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    min_hits: int = Field(2, ge=1)
    domains: dict[str, list[str]] = Field(default_factory=dict)


class NearDedup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(128, ge=16)
    shingle: int = Field(5, ge=1)


class SemanticDedup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    threshold: float = Field(0.95, gt=0, le=1)
    block: int = Field(4096, ge=64)


class DedupRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exact: bool = True
    near: NearDedup = Field(default_factory=NearDedup)
    semantic: SemanticDedup = Field(default_factory=SemanticDedup)


class ExecutionSignal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    timeout: float = Field(5.0, gt=0, le=120)
    memory_mb: int = Field(512, ge=64)
    max_blocks: int = Field(4, ge=1)


class ConsistencySignal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: Literal["auto", "on", "off"] = "auto"
    samples: int = Field(5, ge=2, le=32)
    temperature: float = Field(0.7, gt=0, le=2)
    max_tokens: int | None = Field(None, ge=8)


class Signals(BaseModel):
    """Correctness signals that need no strong judge (quality/reference_answers.py, arithmetic.py,
    execution.py, consistency.py)."""

    model_config = ConfigDict(extra="forbid")
    reference_answer: bool = True
    arithmetic: bool = True
    execution: ExecutionSignal = Field(default_factory=ExecutionSignal)
    consistency: ConsistencySignal = Field(default_factory=ConsistencySignal)


class GateRules(BaseModel):
    """Everything `default_gate.yaml` documents."""

    model_config = ConfigDict(extra="forbid")
    checks: dict[str, CheckRule]
    signals: Signals = Field(default_factory=Signals)
    refine: RefineRule = Field(default_factory=RefineRule)
    judges: Literal["auto", "on", "off"] = "auto"
    high_stakes: HighStakes = Field(default_factory=HighStakes)
    dedup: DedupRule = Field(default_factory=DedupRule)

    def failures(self, scores: dict[str, float]) -> list[tuple[str, Action]]:
        """(check, action) for every configured check whose score is out of bounds."""
        return [(name, rule.on_fail) for name, rule in self.checks.items() if rule.fails(scores.get(name))]

    def soft_failures(self, scores: dict[str, float]) -> list[str]:
        """Failing checks that Self-Refine may be able to fix."""
        return [n for n, _ in self.failures(scores) if n in self.refine.checks]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "domains" else v
    return out


@lru_cache(maxsize=1)
def _default_dict() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))


def load_rules(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> GateRules:
    """Defaults, then the YAML at `path` (partial files are fine), then `overrides` (a dict)."""
    data = _default_dict()
    if path:
        p = Path(path)
        if not p.is_file():
            raise DataforgeError(f"{p}: gate config not found")
        try:
            user = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DataforgeError(f"{p}: not valid YAML ({exc})") from exc
        if not isinstance(user, dict):
            raise DataforgeError(f"{p}: the gate config must be a mapping")
        data = _merge(data, user)
    if overrides:
        data = _merge(data, overrides)
    try:
        return GateRules.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise DataforgeError(where + "bad gate config: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc


def worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def decide(scores: dict[str, float], rules: GateRules, extra: list[tuple[str, Action]] = ()) -> tuple[str, list[str]]:
    """Status and reasons from the scores (`extra`: failures found outside the score table)."""
    status, reasons = "accepted", []
    for name, action in [*rules.failures(scores), *extra]:
        status = worse(status, "rejected" if action == "reject" else "review")
        value = scores.get(name)
        reasons.append(f"{name}:{value:.3g}" if isinstance(value, float) and not name.startswith("duplicate") else name)
    return status, reasons


def explained(reasons: list[str], details: dict[str, str]) -> list[str]:
    """`decide`'s reasons with each check's own finding in place of its bare score where there is one
    ("truncation:dangling_word" rather than "truncation:0")."""
    return [f"{name}:{details[name]}" if name in details else reason
            for reason, name in ((x, x.split(":", 1)[0]) for x in reasons)]


class DomainDetector:
    """High-stakes domains by whole-word keyword hits (cheap, explainable, configurable)."""

    def __init__(self, cfg: HighStakes):
        self.cfg = cfg
        self._patterns = {d: [re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, k.split())) + r"(?!\w)", re.I)
                              for k in kws] for d, kws in cfg.domains.items()}

    def detect(self, text: str) -> list[str]:
        if not self.cfg.enabled:
            return []
        return [d for d, pats in self._patterns.items() if sum(1 for p in pats if p.search(text)) >= self.cfg.min_hits]
