"""`--fsdp`: weights, gradients and optimizer state sharded over the processes (torch FSDP2, `fully_shard`).

Each decoder layer is its own FSDP unit (gathered just before it runs, freed after); everything else
(embeddings, LM head, the dataforge modules, task weights) is the root unit. The data plan is DDP's: each
process takes every N-th micro-batch, and FSDP averages the gradients, so N processes compute what one
process computes with N times the gradient accumulation. Runs on CUDA (nccl) and on CPU (gloo).

Checkpoints: `sharded` (default) writes one shard per process with `torch.distributed.checkpoint` and can
resume on another number of processes; `full` gathers weights and optimizer state into one file
(rank 0 writes). Both resume under `--fsdp` only.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..errors import DataforgeError
from .model import decoder_layers

WEIGHTS, OPTIMIZER, SHARDS = "weights.safetensors", "optimizer.safetensors", "shards"


def shard(objective: torch.nn.Module, dist) -> None:
    """fully_shard every decoder layer, then the whole objective (in place)."""
    from torch.distributed.fsdp import fully_shard

    if dist.world < 2:
        raise DataforgeError("--fsdp shards over several processes, but WORLD_SIZE is 1: launch with "
                             "`torchrun --nproc_per_node N -m dataforge train ...` or `accelerate launch`")
    for layer in decoder_layers(objective.model.base):
        fully_shard(layer)
    fully_shard(objective)


@contextmanager
def grad_sync(train_obj: torch.nn.Module, sync: bool, fsdp: bool):
    """Skip the gradient all-reduce / reduce-scatter on micro-batches before the last of a step."""
    if fsdp:
        train_obj.set_requires_gradient_sync(sync)
        yield
    elif sync or not hasattr(train_obj, "no_sync"):
        with nullcontext():
            yield
    else:
        with train_obj.no_sync():
            yield


def full_model_state(objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every process calls it; rank 0 gets the whole `objective.model` state dict on CPU, the others {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def save(tmp: Path, objective, opt, fmt: str, rank: int) -> dict[str, Any]:
    """Write weights + optimizer state into `tmp` (every process calls it); returns state.json additions."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from .device import rng_states

    torch.save(rng_states(), tmp / f"rng-{rank}.pt")
    if fmt == "sharded":
        model_sd, optim_sd = get_state_dict(objective, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / SHARDS))
        return {"fsdp_format": "sharded"}
    from safetensors.torch import save_file

    model_sd, optim_sd = get_state_dict(objective, opt, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))
    if rank == 0:
        from .hf_auto import _without_tied_copies

        save_file({k: v.contiguous() for k, v in _without_tied_copies(model_sd, objective).items()},
                  str(tmp / WEIGHTS))
        flat = {f"{fqn}|{k}": v.contiguous() for fqn, st in optim_sd["state"].items() for k, v in st.items()}
        save_file(flat, str(tmp / OPTIMIZER))
    return {"fsdp_format": "full", "fsdp_param_groups": optim_sd.get("param_groups", [])}


def load(path: Path, objective, opt, state: dict[str, Any], rank: int) -> None:
    """Restore a checkpoint written by `save` (sharded ones onto any number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    fmt = state.get("fsdp_format")
    if fmt is None:
        raise DataforgeError(f"{path}: not an FSDP checkpoint; resume it without --fsdp, or use a new output dir")
    rng = path / f"rng-{rank}.pt"
    if rng.exists():
        from .device import restore_rng

        restore_rng(torch.load(rng))
    if fmt == "sharded":
        from torch.distributed.checkpoint import DefaultLoadPlanner

        model_sd, optim_sd = get_state_dict(objective, opt)
        model_holder, optim_holder = {"model": model_sd}, {"optim": optim_sd}
        dcp.load(model_holder, checkpoint_id=str(path / SHARDS))          # every weight must be there
        # get_state_dict gives every parameter an (empty) AdamW state; ones that never had a gradient (a head
        # whose loss is off) have none in the checkpoint and keep that empty state, as in an unbroken run
        dcp.load(optim_holder, checkpoint_id=str(path / SHARDS), planner=DefaultLoadPlanner(allow_partial_load=True))
        set_state_dict(objective, opt, model_state_dict=model_holder["model"], optim_state_dict=optim_holder["optim"])
        return
    from safetensors.torch import load_file

    model_sd = load_file(str(path / WEIGHTS))
    for name, t in objective.state_dict().items():          # restore tied names dropped at save time
        if name not in model_sd:
            twin = _tied_twin(objective, name, model_sd)
            if twin is None:
                raise DataforgeError(f"{path / WEIGHTS}: missing {name}")
            model_sd[name] = model_sd[twin]
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in load_file(str(path / OPTIMIZER)).items():
        fqn, k = key.split("|", 1)
        per_param.setdefault(fqn, {})[k] = v
    optim_sd = {"state": per_param, "param_groups": state["fsdp_param_groups"]}
    set_state_dict(objective, opt, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True))


def _tied_twin(objective, name: str, present: dict[str, torch.Tensor]) -> str | None:
    """The saved name of a parameter tied to `name` (same local storage), if any."""
    sd = objective.state_dict()
    ptr = sd[name].to_local().untyped_storage().data_ptr() if hasattr(sd[name], "to_local") else \
        sd[name].untyped_storage().data_ptr()
    for other, t in sd.items():
        local = t.to_local() if hasattr(t, "to_local") else t
        if other != name and other in present and local.untyped_storage().data_ptr() == ptr:
            return other
    return None


def write_state_json(tmp: Path, state: dict[str, Any]) -> None:
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=list), encoding="utf-8")
