"""What a run may spend, and what it cost: prices, token and dollar budgets.

Why here: every model request of every stage crosses the meter (`meter.MeteredLLM`), so the meter is
where a budget is enforced, the same way for every stage. Prices are the user's (per million prompt and
completion tokens, from ``--price-in`` / ``--price-out`` or a pipeline's ``prices:`` block): dataforge
ships no price list that goes stale. Cached answers cost nothing.

A budget counts what the job has spent over all its attempts: a run stopped by its budget records its
spend in its journal (and a pipeline's stages in the manifest), so re-running with the same budget stops
again at once and a larger budget resumes for the difference. When the budget is reached, requests
already on their way are let finish (their work is journaled: the run stops within about one batch of
the budget), no new one is sent, and the stage writes what it finished.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import DataforgeError
from .summary import Tokens


class Prices(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(..., ge=0, description="dollars per million prompt tokens")
    output: float = Field(..., ge=0, description="dollars per million completion tokens")

    def cost(self, tokens: Tokens) -> float:
        return (tokens.prompt * self.input + tokens.completion * self.output) / 1e6


class Budget(BaseModel):
    """Prices (for costs in summaries) and the limits a run stops at; all optional."""

    model_config = ConfigDict(extra="forbid")

    prices: Optional[Prices] = None
    tokens: Optional[int] = Field(None, ge=1, description="stop when the job has used this many tokens")
    usd: Optional[float] = Field(None, gt=0, description="stop when the job has cost this many dollars")
    spent_before: Tokens = Field(default_factory=Tokens, description="what earlier attempts and stages used")

    @model_validator(mode="after")
    def _usd_needs_prices(self) -> "Budget":
        if self.usd is not None and self.prices is None:
            raise ValueError("a dollar budget needs prices (--price-in and --price-out, or a prices: block)")
        return self

    @property
    def limited(self) -> bool:
        return self.tokens is not None or self.usd is not None

    def cost(self, tokens: Tokens) -> float | None:
        return self.prices.cost(tokens) if self.prices is not None else None

    def reached(self, spent_now: Tokens) -> str | None:
        """Why the job must stop (in words), given what this attempt spent so far; None to go on."""
        total = Tokens()
        total.add(self.spent_before)
        total.add(spent_now)
        if self.tokens is not None and total.total >= self.tokens:
            return f"token budget of {self.tokens:,} reached"
        if self.usd is not None and self.prices is not None and self.prices.cost(total) >= self.usd:
            return f"dollar budget of ${self.usd:,.4f} reached"
        return None

    def report(self, spent_now: Tokens, stopped: str | None) -> dict[str, Any]:
        """The summary's `budget` block: limits, what the job has spent in all, and whether it stopped."""
        total = Tokens()
        total.add(self.spent_before)
        total.add(spent_now)
        return {"tokens": self.tokens, "usd": self.usd, "spent_tokens": total.total,
                "spent_usd": round(self.prices.cost(total), 6) if self.prices is not None else None,
                "stopped": stopped}


class BudgetReached(Exception):
    """Raised at the meter in place of a request the budget does not allow (not an `LLMError`: no stage
    may record it as a failed request). The runner turns it into a clean, resumable stop."""


def make_budget(price_in: float | None = None, price_out: float | None = None, budget_tokens: int | None = None,
                budget_usd: float | None = None, prices: dict[str, float] | None = None) -> Budget | None:
    """A Budget from command-line values (over a pipeline's `prices` block); None when nothing was given."""
    given_prices = dict(prices or {})
    if price_in is not None:
        given_prices["input"] = price_in
    if price_out is not None:
        given_prices["output"] = price_out
    if given_prices and set(given_prices) != {"input", "output"}:
        raise DataforgeError("prices need both --price-in and --price-out (dollars per million prompt and "
                             "completion tokens)")
    if not given_prices and budget_tokens is None and budget_usd is None:
        return None
    from pydantic import ValidationError

    try:
        return Budget(prices=Prices(**given_prices) if given_prices else None, tokens=budget_tokens, usd=budget_usd)
    except ValidationError as exc:  # pydantic's, in one line
        flags = {"tokens": "--budget-tokens: ", "usd": "--budget-usd: ", "input": "--price-in: ", "output": "--price-out: "}
        raise DataforgeError("; ".join(flags.get(str(e["loc"][-1]) if e["loc"] else "", "")
                                       + e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
