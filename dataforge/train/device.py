"""Which device and which precision: `generate --device` and the trainer's mixed-precision choice."""

from __future__ import annotations

import torch

from ..errors import DataforgeError


def resolve_device(name: str, cuda_devices: int | None = None, mps: bool | None = None) -> torch.device:
    """'auto' -> the first GPU when there is one, else the CPU; a named device must exist. (cuda_devices, mps:
    what this machine has; found out when not given.)"""
    n_cuda = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if name == "auto":
        return torch.device("cuda" if n_cuda > 0 else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise DataforgeError(f"--device {name}: not a device name (cpu, cuda, cuda:N, mps, auto)") from exc
    if dev.type == "cuda" and (dev.index or 0) >= n_cuda:
        raise DataforgeError(f"--device {name}: no such CUDA device here ({n_cuda} visible); use --device cpu "
                             "or auto")
    has_mps = torch.backends.mps.is_available() if mps is None else mps
    if dev.type == "mps" and not has_mps:
        raise DataforgeError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return dev


def choose_precision(setting: str, device_type: str, bf16_native: bool) -> torch.dtype | None:
    """Autocast dtype (None: float32). auto: bf16 on a GPU that has it natively, else fp16 (the loop then
    scales the loss: `GradScaler`), float32 on CPU. on: bf16, refused on a GPU without native bf16."""
    if setting == "off":
        return None
    if device_type == "cuda":
        if bf16_native:
            return torch.bfloat16
        if setting == "on":
            raise DataforgeError("--bf16 on: this GPU has no native bf16; use --bf16 auto (fp16 with a gradient "
                                 "scaler) or --bf16 off")
        return torch.float16
    return torch.bfloat16 if setting == "on" else None


def rng_states() -> dict[str, torch.Tensor]:
    """The RNG states a resumed run must continue from: the CPU generator, and the current GPU's when CUDA is
    in use (dropout on a GPU draws from there)."""
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["rng.cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    """Undo `rng_states` (pops its keys from `states`); a CUDA state is restored only where CUDA is present."""
    torch.set_rng_state(states.pop("rng.torch"))
    cuda_rng = states.pop("rng.cuda", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
