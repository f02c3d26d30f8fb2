"""`train` as a pipeline stage. Training owns its whole run (its own reader with an eval split, its own
checkpoints and resume), so the stage hands it the input and the output folder and reports its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..stage import Stage
from .config import TrainConfig


class TrainStage(Stage):
    """Fine-tune a causal LM on the records (see `dataforge train`)."""

    name = "train"
    Config = TrainConfig
    owns_run = True
    journaled = False  # checkpoints are its journal
    side_inputs = ("ewc_reference",)
    output_name = "model"
    output_is_dir = True
    cli = False  # `dataforge train` has its own command (torchrun, --config FILE)

    def run_alone(self, input_path: Path, output_path: Path, *, progress: bool) -> dict[str, Any]:
        from . import run_train

        return run_train(input_path, output_path, self.cfg, progress=progress)

    def process(self, records, ctx) -> None:  # pragma: no cover - owns_run: the runner calls run_alone
        raise NotImplementedError

    def finish(self, ctx) -> dict[str, Any]:  # pragma: no cover - owns_run: the runner calls run_alone
        raise NotImplementedError
