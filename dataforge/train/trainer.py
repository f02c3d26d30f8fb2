"""The training loop: `run_train(input, output_dir, cfg)`.

Plain PyTorch, readable top to bottom: read records -> tokenise -> plan batches -> AdamW with warmup and
cosine decay, gradient accumulation and clipping -> eval loss -> checkpoints (safetensors) -> final model.
Multi-process: launch with `torchrun --nproc_per_node N -m dataforge train ...`; each process takes every
N-th micro-batch of the same deterministic plan and DDP averages the gradients (gloo on CPU, nccl on GPU).

Resuming: the data plan and the masking randomness are functions of (seed, epoch, micro-batch index), and a
checkpoint holds weights, optimizer moments and the step, so a killed run continues exactly where it was.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataforgeError
from ..io import RejectSink, ReadStats, read_records, write_json_atomic
from .config import TrainConfig
from .data import (Example, PromptFormatter, TaskInfo, collate, encode_records, plan_rows,
                   split_eval, SEG_TEMPLATE)
from . import fsdp
from .arch import check_matches_base
from .checkpoints import CKPT_DIR, ckpt_dirs, load_checkpoint, save_checkpoint
from .device import choose_precision
from .evaluation import EvalSet, evaluate
from .losses import Anchor, Objective, estimate_fisher
from .model import InstructModel, add_inst_tokens, add_mask_token, quiet_hf
from .step import accumulate, step_batch
from .model_dir import write_model
from .selection import BestTracker



# ------------------------------------------------------------------------------------------ setup


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo")
            if cuda:
                torch.cuda.set_device(device)
        return cls(rank, world, local, device)


def load_base(cfg: TrainConfig):
    """(model, tokenizer) for cfg.model: 'smollm2' or a local HF directory (never the hub)."""
    if cfg.qlora:
        from .lora import load_qlora_base

        return load_qlora_base(cfg, Dist.from_env().device)
    if cfg.model == "smollm2":
        from .smollm2 import load_smollm2

        with quiet_hf():
            return load_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(cfg.model)
    if not path.is_dir():
        raise DataforgeError(f"{cfg.model}: not a model directory (use a local HF model dir or 'smollm2'; "
                             "dataforge never downloads models)")
    with quiet_hf():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer or path)
    return model, tok


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(objective: Objective, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Base weights at cfg.lr (no decay on biases/norms), new modules and task weights at cfg.mods_lr."""
    decay, no_decay, mods = [], [], []
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        if not name.startswith("model.base."):
            mods.append(p)
        elif p.ndim < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "peak_lr": cfg.lr},
              {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "peak_lr": cfg.lr}]
    if mods:
        groups.append({"params": mods, "lr": cfg.mods_lr, "weight_decay": 0.0, "peak_lr": cfg.mods_lr})
    return groups


# ------------------------------------------------------------------------------------------ data


def _read(input_path: Path, cfg: TrainConfig, out: Path, drops: dict[str, int]):
    stats = ReadStats()
    with RejectSink(out / "input.rejects.jsonl") as sink:
        records = list(read_records(input_path, rejects=sink, stats=stats))
    if sink.total:
        drops["bad_input_line"] = sink.total
    kept = []
    for r in records:
        if r.status not in cfg.include_status:
            drops[f"status_{r.status}"] = drops.get(f"status_{r.status}", 0) + 1
        else:
            kept.append(r)
    return records, kept


def _reference_examples(cfg: TrainConfig, fmt: PromptFormatter, tasks: TaskInfo,
                        train_ex: list[Example]) -> list[Example]:
    """Texts for the Fisher: cfg.ewc_reference (records, or plain text lines), else the first train samples."""
    if not cfg.ewc_reference:
        return train_ex[: cfg.ewc_samples]
    path = Path(cfg.ewc_reference)
    if not path.exists():
        raise DataforgeError(f"{path}: EWC reference file not found")
    if path.suffix in (".jsonl", ".json", ".parquet"):
        recs = [r for _, r in zip(range(cfg.ewc_samples), read_records(path))]
        return encode_records(recs, fmt, tasks, {})
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        ids = fmt.tok(line, add_special_tokens=False)["input_ids"][: cfg.max_length]
        if len(ids) >= 2:
            out.append(Example(ids, [SEG_TEMPLATE] * len(ids), [False] * len(ids)))
        if len(out) >= cfg.ewc_samples:
            break
    return out


class BatchPlan:
    """Maps a global micro-batch number to its rows; plans are cached per epoch."""

    def __init__(self, examples: list[Example], cfg: TrainConfig, shuffle: bool = True):
        self.examples, self.cfg, self.shuffle = examples, cfg, shuffle
        self._cache: dict[int, list] = {}

    def epoch(self, e: int) -> list[list[list[int]]]:
        if e not in self._cache:
            self._cache = {e: plan_rows(self.examples, packing=self.cfg.pack, group_by_length=self.cfg.group_by_length,
                                        capacity=self.cfg.max_length, batch_size=self.cfg.batch_size,
                                        seed=self.cfg.seed, epoch=e, shuffle=self.shuffle)}
        return self._cache[e]

    def __len__(self) -> int:
        return len(self.epoch(0))

    def rows(self, g: int) -> list[list[Example]]:
        n = len(self)
        return [[self.examples[i] for i in row] for row in self.epoch(g // n)[g % n]]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------ main entry


def run_train(input_path, output_dir, cfg: TrainConfig, *, progress: bool = True,
              model=None, tokenizer=None) -> dict[str, Any]:
    """Fine-tune on the records in `input_path`; write checkpoints, logs and the final model under
    `output_dir`. `model`/`tokenizer` (an HF causal LM and its tokenizer) override `cfg.model`.
    Returns a JSON-able summary (also written to `output_dir/summary.json`)."""
    from ..progress import progress_bar

    t_start = time.time()
    dist = Dist.from_env()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # -- data -------------------------------------------------------------------------------------
    drops: dict[str, int] = {}
    all_records, records = _read(Path(input_path), cfg, out, drops)
    train_recs, eval_recs = split_eval(records, cfg.eval_fraction, cfg.eval_max)
    if model is None:
        model, tokenizer = load_base(cfg)
    elif tokenizer is None:
        raise DataforgeError("run_train(model=...) needs the tokenizer too")
    elif cfg.qlora:
        raise DataforgeError("--qlora loads the base itself in 4-bit: give cfg.model, not run_train(model=...)")
    prompt_only: list[int] = add_inst_tokens(tokenizer) if cfg.inst_tokens else []
    mask_id = None
    if cfg.instruction_mask_prob > 0 and cfg.instruction_mask_mode == "mask":
        mask_id = add_mask_token(tokenizer)
        prompt_only.append(mask_id)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    task_names = sorted({r.task for r in train_recs if r.task})
    tasks = TaskInfo(task_names, cfg.task_kinds, cfg.temperature_by_kind)
    fmt = PromptFormatter(tokenizer, cfg.prompt_format, cfg.inst_tokens, cfg.max_length)
    dpo = None
    if cfg.objective == "dpo":  # preference pairs instead of answers: data, plan, loss and eval from train/dpo.py
        from . import dpo
    train_ex = dpo.encode_pairs(train_recs, fmt, drops) if dpo else encode_records(train_recs, fmt, tasks, drops)
    eval_ex = dpo.encode_pairs(eval_recs, fmt, drops) if dpo else encode_records(eval_recs, fmt, tasks, drops)
    if not train_ex:
        raise DataforgeError(f"{input_path}: no usable training records (dropped: {drops or 'none'})")
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    make_plan, collate_fn = (dpo.pair_plan, dpo.collate_pairs) if dpo else (BatchPlan, collate)
    evaluate_fn = dpo.evaluate if dpo else evaluate
    plan = make_plan(train_ex, cfg)

    # -- model, objective, optimizer ------------------------------------------------------------------
    if not cfg.qlora:                     # a 4-bit model was placed on its device when it was loaded
        model.to(dist.device)
    base_check = check_matches_base(model, [e for row in plan.rows(0) for e in row], pad_id, dist.device)
    peft_model = None
    if cfg.lora:
        from .lora import apply_lora

        peft_model = apply_lora(model, cfg, prompt_only)
    imodel = InstructModel(model, cfg.mods_dict(), len(task_names), prompt_only)
    if peft_model is not None:
        from .lora import adapted_modules, attach

        attach(imodel, peft_model)
    imodel.neftune_alpha = cfg.neftune_alpha
    if not cfg.qlora:                     # a 4-bit model was placed on its device when it was loaded
        imodel.to(dist.device)
    if cfg.grad_checkpointing:
        model.config.use_cache = False
        if hasattr(model, "activation_checkpointing_enable"):        # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    anchor = None
    if cfg.ewc_weight > 0 or cfg.l2sp_weight > 0:
        fisher = None
        if cfg.ewc_weight > 0:
            ref = _reference_examples(cfg, fmt, tasks, train_ex)
            fisher = estimate_fisher(imodel, (_to(collate([[e]], pad_id), dist.device) for e in ref))
        anchor = Anchor(imodel, fisher, cfg.ewc_weight, cfg.l2sp_weight).to(dist.device)
    counts = [sum(1 for e in train_ex if e.task_id == k) for k in range(len(task_names))]
    counts.append(sum(1 for e in train_ex if e.task_id < 0))
    objective = (dpo.DPOObjective(imodel, cfg, train_ex + eval_ex, pad_id, dist.device, cfg.batch_size) if dpo
                 else Objective(imodel, cfg, len(task_names), counts, anchor)).to(dist.device)
    objective.train()
    from .lora import param_counts

    params = param_counts(objective)
    if cfg.fsdp:
        fsdp.shard(objective, dist)
    opt = torch.optim.AdamW(param_groups(objective, cfg), betas=(0.9, 0.95), eps=1e-8)

    per_step = cfg.grad_accum * dist.world
    steps_per_epoch = max(1, len(plan) // per_step)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = max(1, round(cfg.warmup_ratio * total_steps))
    eval_plan = make_plan(eval_ex, cfg, shuffle=False)
    eval_rows = [eval_plan.rows(i) for i in range(len(eval_plan))] if eval_ex else []
    evalset = dpo.eval_set(eval_rows, pad_id) if dpo else EvalSet.build(eval_rows, eval_recs, pad_id)

    step, tokens_seen, resumed_from, best = 0, 0, None, BestTracker(cfg.early_stop_patience)
    amp_dtype = choose_precision(cfg.bf16, dist.device.type, dist.device.type == "cuda" and
                                 torch.cuda.is_bf16_supported(including_emulation=False))
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16)
    ckpts = ckpt_dirs(out) if cfg.resume else []
    if ckpts:
        state = load_checkpoint(ckpts[-1], objective, opt, cfg, dist, scaler)
        step, tokens_seen, resumed_from = state["step"], state.get("tokens", 0), str(ckpts[-1])
        best = BestTracker.from_state(state.get("best"), cfg.early_stop_patience)

    def counters() -> dict[str, Any]:
        return {"tokens": tokens_seen, "best": best.state()}

    model_meta = {"prompt_format": fmt.fmt, "tasks": task_names, "base_model": cfg.model,
                  "max_length": cfg.max_length}

    def save_model_dir(name: str) -> None:
        """Write run_dir/<name> (every process calls it: FSDP gathers the weights first)."""
        state = fsdp.full_model_state(objective) if cfg.fsdp else None
        if dist.main:
            write_model(out / name, imodel, tokenizer, model_meta, cfg=cfg, state=state)

    def after_eval(evals: dict[str, Any], at: int) -> None:
        if evals and best.update(at, evals["eval_loss"]) and cfg.keep_best:
            save_model_dir("best")

    train_obj: torch.nn.Module = objective
    if dist.world > 1 and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_obj = DDP(objective, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                        find_unused_parameters=imodel.has_mods, broadcast_buffers=False)

    def autocast():
        return torch.autocast(dist.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    # -- loop ---------------------------------------------------------------------------------------
    restore_sigterm = _sigterm_as_interrupt()
    log_path = out / "log.jsonl"
    if dist.main and resumed_from and log_path.exists():   # drop lines of steps the crash lost (redone now)
        kept = [line for line in log_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _log_step(line) <= step]
        log_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    # a run that starts over (no checkpoint, or resume=False) starts its log over too
    log = open(log_path, "a" if resumed_from else "w", encoding="utf-8") if dist.main else None
    reporter = None
    if dist.main and cfg.report_to != "none":
        from .reporting import Reporter

        reporter = Reporter(cfg.report_to, out, cfg.model_dump(mode="json"), start_step=step)
    saved_step, t_saved, updating = step, time.time(), False
    last: dict[str, float] = {}
    evals: dict[str, float] = {}
    t_loop, tok_window, t_window = time.time(), 0, time.time()
    show = progress and dist.main
    with (progress_bar("train", total=total_steps, unit="step") if show else nullcontext()) as bar:
        if bar is not None and step:
            bar.advance(step)
        try:
            while step < total_steps and not best.stop:
                for group in opt.param_groups:
                    group["lr"] = group["peak_lr"] * lr_factor(step, total_steps, warmup)
                batches = [_to(step_batch(plan, cfg, step * per_step + k * dist.world + dist.rank, pad_id, mask_id,
                                          collate_fn),
                               dist.device) for k in range(cfg.grad_accum)]
                step_tokens = sum(int((b["sample_idx"] >= 0).sum()) for b in batches)
                sums = accumulate(train_obj, objective, batches, dist, autocast, scaler, cfg.fsdp)
                scaler.unscale_(opt)             # (a no-op unless fp16)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.max_grad_norm)
                updating = True                  # weights change here: an interrupt now must not be saved
                scaler.step(opt)                 # skips the step if fp16 gradients overflowed
                scaler.update()
                opt.zero_grad(set_to_none=True)
                step += 1
                updating = False
                if dist.world > 1:
                    sums, step_tokens = _all_reduce_sum(sums, step_tokens, dist)
                tokens_seen += step_tokens
                tok_window += step_tokens
                last = sums
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    evals = evaluate_fn(objective, evalset, dist.device, autocast, dist.rank, dist.world, cfg.fsdp)
                    after_eval(evals, step)
                if dist.main and (step % cfg.log_every == 0 or step == total_steps):
                    now = time.time()
                    tps = tok_window / max(1e-9, now - t_window)
                    entry = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": opt.param_groups[0]["lr"],
                             **{k: round(v, 6) for k, v in sums.items()}, "tokens": tokens_seen,
                             "tokens_per_s": round(tps, 1)} | evals
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    if reporter is not None:
                        reporter.log(step, entry)
                    evals = {}
                    tok_window, t_window = 0, now
                    if bar is not None:
                        bar.status(f"loss {sums['loss']:.4f} | {tps:,.0f} tok/s")
                if bar is not None:
                    bar.advance(1)
                due = (cfg.save_every and step % cfg.save_every == 0) or \
                    (cfg.save_minutes and time.time() - t_saved >= 60 * cfg.save_minutes)
                if due and step < total_steps and (dist.main or cfg.fsdp):
                    save_checkpoint(out, step, objective, opt, cfg, counters(), dist, scaler)
                    saved_step, t_saved = step, time.time()
        except KeyboardInterrupt:
            restore_sigterm()
            if dist.main and not updating and step > saved_step and not cfg.fsdp:
                save_checkpoint(out, step, objective, opt, cfg, counters(), scaler=scaler)
                saved_step = step
            if log is not None:
                log.close()
            raise DataforgeError(f"interrupted at step {step}/{total_steps}; the checkpoint of step {saved_step} "
                                 f"is in {out / CKPT_DIR}: run the same command again to resume") from None
    restore_sigterm()
    loop_s = time.time() - t_loop

    # -- finish -------------------------------------------------------------------------------------
    final_eval = evaluate_fn(objective, evalset, dist.device, autocast, dist.rank, dist.world, cfg.fsdp)
    if not best.stop:
        after_eval(final_eval, step)
    in_sync = None if cfg.fsdp else _ranks_in_sync(objective, dist)     # FSDP: every process holds other shards
    summary: dict[str, Any] = {
        "input": str(input_path), "output_dir": str(out), "records_in": len(all_records),
        "records_used": len(train_ex) + len(eval_ex), "train_samples": len(train_ex), "eval_samples": len(eval_ex),
        "dropped": drops, "tasks": task_names, "steps": step, "total_steps": total_steps,
        "tokens": tokens_seen, "tokens_per_s": round(tokens_seen / max(1e-9, loop_s), 1) if not resumed_from else None,
        "final_loss": {k: round(v, 6) for k, v in last.items()},
        **{k: v for k, v in final_eval.items() if k != "eval_by"},
        "eval_loss_by": final_eval.get("eval_by", {}),
        **(best.summary() if final_eval else {}),
        "params": params, "world_size": dist.world, "fsdp": cfg.fsdp, "ranks_in_sync": in_sync,
        "resumed_from": resumed_from, "prompt_format": fmt.fmt, "model_dir": str(out / "model"),
        "plain_hf": not imodel.has_mods and peft_model is None, "objective": cfg.objective,
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32",
        "base_check": base_check,
    }
    if peft_model is not None:
        summary["adapter"] = {"kind": "qlora" if cfg.qlora else "lora", "r": cfg.lora_r, "alpha": cfg.lora_alpha,
                              "targets": adapted_modules(peft_model)}
    if final_eval and cfg.keep_best and best.best_step is not None:
        summary["best_dir"] = str(out / "best")
    if resumed_from is None or step > int(Path(resumed_from).name.split("-")[1]):
        if dist.main or cfg.fsdp:
            save_checkpoint(out, step, objective, opt, cfg, counters(), dist, scaler)
    save_model_dir("model")
    if cfg.merge and dist.main:
        from .lora import merge_into_base

        merge_into_base(imodel)
        write_model(out / "merged", imodel, tokenizer, model_meta | {"merged_adapter": True}, cfg=cfg)
        summary["merged_dir"] = str(out / "merged")
    if dist.main:
        summary["wall_s"] = round(time.time() - t_start, 2)
        write_json_atomic(out / "summary.json", summary)
        log.close()
        if reporter is not None:
            reporter.close()
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    return summary


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler stopping the job) takes the Ctrl-C path: checkpoint, then stop. Returns undo."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _log_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 60                     # a torn last line: drop it


def _all_reduce_sum(sums: dict[str, float], tokens: int, dist: Dist) -> tuple[dict[str, float], int]:
    """Every process logged its shares of the step's loss terms: their sum is the step's value."""
    import torch.distributed as tdist

    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(tokens)], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    vals = t.tolist()
    return {k: vals[i] for i, k in enumerate(keys)}, int(vals[-1])


def _ranks_in_sync(objective: Objective, dist: Dist) -> bool:
    """DDP sanity check: every process ends with the same weights (compares a checksum)."""
    if dist.world == 1:
        return True
    import torch.distributed as tdist

    s = torch.tensor([sum(float(p.detach().double().sum()) for p in objective.parameters())],
                     dtype=torch.float64, device=dist.device)
    lo, hi = s.clone(), s.clone()
    tdist.all_reduce(lo, op=tdist.ReduceOp.MIN)
    tdist.all_reduce(hi, op=tdist.ReduceOp.MAX)
    return bool(abs(float(hi - lo)) <= 1e-9 * max(1.0, abs(float(hi))))
