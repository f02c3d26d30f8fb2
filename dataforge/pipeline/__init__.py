"""Declarative batch jobs: `dataforge run pipelines/NAME.yaml` chains the stages under a run
directory with a manifest, resumes after a crash, redoes only what changed, and shards or fans out
to Ray for scale."""

from .engine import Engine, RunOptions, run_pipeline
from .spec import PipelineSpec, find_pipeline, load_pipeline, parse_pipeline

__all__ = ["Engine", "RunOptions", "run_pipeline", "PipelineSpec", "find_pipeline", "load_pipeline", "parse_pipeline"]
