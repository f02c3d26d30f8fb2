"""Scale-out of generation stages on a Ray cluster (`dataforge run --ray ADDRESS`)."""

from .ray_runner import ensure_ray, run_stage_on_ray, sum_summaries

__all__ = ["ensure_ray", "run_stage_on_ray", "sum_summaries"]
