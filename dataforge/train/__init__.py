"""Instruction fine-tuning: `TrainConfig` + `run_train` (the `dataforge train` stage).

Heavy imports (torch, transformers) happen when `run_train` is first used, not at package import.
"""

from .config import TrainConfig


def run_train(input_path, output_dir, cfg: TrainConfig, *, progress: bool = True, **kwargs) -> dict:
    """See `dataforge.train.trainer.run_train`."""
    from .trainer import run_train as _run

    return _run(input_path, output_dir, cfg, progress=progress, **kwargs)


__all__ = ["TrainConfig", "run_train"]
