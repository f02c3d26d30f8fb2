"""Best checkpoint by eval loss, and early stopping.

After every eval the tracker says whether the eval loss is the lowest so far (the trainer then writes
`best/`) and, with a patience, when `patience` evals in a row brought no lower loss (the run stops). Its
state travels in every checkpoint, so a resumed run keeps its best and its count, and a run that stopped
early stays stopped when started again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BestTracker:
    patience: int = 0
    best_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_at: int | None = None

    def update(self, step: int, loss: float) -> bool:
        """Record an eval; True when it is the best so far (strictly lower loss)."""
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_step, self.evals_since_best = loss, step, 0
            return True
        self.evals_since_best += 1
        if self.patience and self.evals_since_best >= self.patience and self.stopped_at is None:
            self.stopped_at = step
        return False

    @property
    def stop(self) -> bool:
        return self.stopped_at is not None

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, patience: int) -> "BestTracker":
        tracker = cls(**(state or {}))
        tracker.patience = patience
        return tracker

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"best_step": self.best_step, "best_eval_loss": self.best_loss}
        if self.stop:
            out["stopped_early"] = {"step": self.stopped_at, "reason": f"eval loss did not improve for "
                                    f"{self.patience} evals (best {self.best_loss:.6f} at step {self.best_step})"}
        return out
