"""`dataforge export-model`: a trained model directory -> a plain Hugging Face checkpoint (vLLM, TGI, ...).

LoRA adapters are merged; with `--merge-mods` the modifications are folded where that is exact (fold.py).
Every export is checked: the written directory is loaded back as a plain transformers model and its logits
on a probe example are compared with the dataforge model's. An export meant to be exact that differs is
an error; one that dropped modules (`drop_unfoldable`) reports how far its logits moved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import DataforgeError
from ..records import Record
from .data import PromptFormatter
from .fold import apply_fold, plan_fold
from .model import InstructModel, load_instruct, quiet_hf
from .model_dir import replace_dir

EXACT_TOL = 1e-4
PROBE = Record(instruction="Summarize the text in one sentence.", input="The sea was calm and the wind had dropped.",
               output="The weather at sea was calm.")


def _probe_logits(imodel: InstructModel, fmt: PromptFormatter) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, dataforge logits with prompt-only columns removed) for the probe example."""
    from .hf_auto import single_sample_batch

    ex = fmt.encode(PROBE)
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        logits = imodel(single_sample_batch(ids, None, torch.tensor([ex.segments]), None))["logits"][0]
    keep = [i for i in range(logits.shape[-1]) if i not in set(imodel.prompt_only_ids)]
    return ids, logits[:, keep]


def export_model(run_dir: str | Path, out: str | Path, *, merge_mods: bool = False,
                 drop_unfoldable: bool = False) -> dict[str, Any]:
    """Write the plain checkpoint; returns the report (also saved in the export's dataforge.json)."""
    from transformers import AutoModelForCausalLM

    imodel, tok, meta = load_instruct(run_dir)
    fmt = PromptFormatter(tok, meta.get("prompt_format", "auto"), bool(meta["mods"].get("inst_tokens")),
                          meta.get("max_length", 512))
    merged_adapter = "peft_model" in imodel.__dict__
    if merged_adapter:
        from .lora import merge_into_base

        merge_into_base(imodel)
    ids, reference = _probe_logits(imodel, fmt)
    report = plan_fold(imodel)
    if imodel.has_mods and not merge_mods:
        raise DataforgeError(f"{run_dir}: the model has modifications ({', '.join(_mod_names(report))}); "
                             "--merge-mods folds what can be folded exactly")
    if report.not_exportable and not drop_unfoldable:
        lines = "; ".join(f"{k}: {v}" for k, v in report.not_exportable.items())
        raise DataforgeError(f"not exportable as a plain model without changing its outputs: {lines}. Nothing "
                             "written (--drop-unfoldable writes the base without them, and reports the change)")
    apply_fold(imodel, report)
    base = imodel.base
    if imodel.prompt_only_ids:
        base.generation_config.suppress_tokens = list(imodel.prompt_only_ids)
    exact = not report.not_exportable
    result: dict[str, Any] = {"source": str(run_dir), "output": str(out), "merged_adapter": merged_adapter,
                              **report.as_dict(), "exact": exact}

    def write(tmp: Path) -> None:
        base.config._attn_implementation = imodel._orig_attn
        with quiet_hf():
            base.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        keep = {k: meta[k] for k in ("prompt_format", "tasks", "max_length") if k in meta}
        (tmp / "dataforge.json").write_text(json.dumps(
            {"format": 1, "mods": {}, "n_tasks": 0, "prompt_only_ids": [], "plain_hf": True, **keep,
             "export": {k: v for k, v in result.items() if k != "output"}}, indent=2) + "\n", encoding="utf-8")

    replace_dir(Path(out), write)
    with quiet_hf():
        plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = plain(input_ids=ids).logits[0]
    keep = [i for i in range(got.shape[-1]) if i not in set(imodel.prompt_only_ids)]
    diff = float((got[:, keep] - reference).abs().max())
    result["max_logit_difference"] = diff
    if exact and diff > EXACT_TOL:
        raise DataforgeError(f"export check failed: the exported model's logits differ by {diff:.3g} from the "
                             f"dataforge model's on the probe (a fold that should be exact is not); {out} is wrong")
    return result


def _mod_names(report) -> list[str]:
    return sorted({*report.folded, *report.dropped, *report.not_exportable})
