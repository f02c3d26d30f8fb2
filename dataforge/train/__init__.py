"""Instruction fine-tuning: `TrainConfig` + `run_train` (the `dataforge train` stage).

Heavy imports (torch, transformers) happen when `run_train` is first used, not at package import.
"""

from .config import TrainConfig


def run_train(input_path, output_dir, cfg: TrainConfig, **kwargs) -> dict:
    """See `dataforge.train.trainer.run_train` (its keyword arguments and their defaults live there alone)."""
    from .trainer import run_train as _run

    return _run(input_path, output_dir, cfg, **kwargs)


__all__ = ["TrainConfig", "run_train"]
