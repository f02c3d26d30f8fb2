"""GPU smoke check of `dataforge train` on whatever GPU is present (see scripts/gpu_smoke.sh).

Checks: mixed precision (bf16 where native, else fp16 with a gradient scaler), the routed attention-bias
kernel against the eager float-mask route, gradient checkpointing, a short run with every modification on,
save -> load -> generate, an exact resume (dropout: CUDA RNG state in the checkpoint), and 2-process DDP
(NCCL) when there are 2 GPUs. Prints a pass/fail table; exits 1 if any check failed. A check that could not
run says NOT RUN, never PASS. `--device cpu` runs the same checks on the CPU (DDP over gloo): a dry run of
the script itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path



def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default: the first GPU), cuda:N, or cpu for a dry run")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""   # the dry run: the trainer (which picks its own device) sees no GPU

import torch  # noqa: E402

if ARGS is None or ARGS.device or torch.cuda.is_available():     # no GPU and no --device: answer at once
    from dataforge.io import write_records
    from dataforge.train import TrainConfig, run_train
    from dataforge.train.data import PromptFormatter, TaskInfo, collate, encode_records
    from dataforge.train.losses import Objective
    from dataforge.train.model import InstructModel, load_instruct
    from dataforge.train.tiny import tiny_model, tiny_tokenizer, toy_records

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
TASKS = ["classification", "generation", "math"]


class Skip(Exception):
    """The check cannot run here (reported as NOT RUN)."""


def _batch(tok, device, n=6):
    cfg = TrainConfig()
    exs = encode_records(toy_records(n), PromptFormatter(tok, "auto", False, 256),
                         TaskInfo(TASKS, cfg.task_kinds, cfg.temperature_by_kind), {})
    return {k: v.to(device) for k, v in collate([exs[:3], exs[3:]], tok.pad_token_id).items()}


def _perturbed(model: InstructModel, seed: int = 0) -> InstructModel:
    """Move the new modules off their zero init, the same way on every device."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("base."):
                p.add_(0.2 * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
    return model


def _all_mods_objective(tok, device, attn="sdpa"):
    cfg = TrainConfig.all_mods(inst_tokens=False, fusion_dim=16, fusion_heads=2)
    model = _perturbed(InstructModel(tiny_model("llama", len(tok), attn=attn), cfg.mods_dict(), len(TASKS)))
    return Objective(model.to(device), cfg, len(TASKS)).to(device)


# ---------------------------------------------------------------------------------------- checks


def check_precision(device, work):
    """bf16 autocast where the device has it natively (loss within 2% of float32), else fp16 + GradScaler."""
    from dataforge.train.device import choose_precision

    tok = tiny_tokenizer(chat_template=True)
    native = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    dtype = choose_precision("auto" if device.type == "cuda" else "on", device.type, native)
    obj = _all_mods_objective(tok, device)
    batch = _batch(tok, device)
    with torch.no_grad():
        fp32 = float(obj(batch)["loss"])
    with torch.autocast(device.type, dtype=dtype):
        low = obj(batch)["loss"]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    scaler.scale(low).backward()
    grads_finite = all(torch.isfinite(p.grad).all() for p in obj.parameters() if p.grad is not None)
    rel = abs(float(low) - fp32) / fp32
    ok = math.isfinite(float(low)) and rel < 2e-2 and grads_finite
    return ok, f"{str(dtype).replace('torch.', '')}: loss {float(low):.4f} vs float32 {fp32:.4f} (rel {rel:.1e})" + \
        ("" if grads_finite else ", non-finite gradients")


def check_fp16_scaler(device, work):
    """One optimizer step with fp16 autocast and a GradScaler (the path of GPUs without bf16)."""
    if device.type != "cuda":
        raise Skip("fp16 autocast + GradScaler is the CUDA path")
    tok = tiny_tokenizer(chat_template=True)
    obj = _all_mods_objective(tok, device)
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    batch = _batch(tok, device)
    before = [p.detach().clone() for p in obj.parameters()]
    with torch.autocast("cuda", dtype=torch.float16):
        loss = obj(batch)["loss"]
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    moved = sum(int(not torch.equal(a, p.detach())) for a, p in zip(before, obj.parameters()))
    ok = math.isfinite(float(loss)) and moved > 0 and scaler.get_scale() > 0
    return ok, f"loss {float(loss):.4f}, {moved} tensors updated, scale {scaler.get_scale():.0f}"


def check_bias_kernel(device, work):
    """The sdpa route (bias as one extra q/k dimension, padded to a multiple of 8 on GPU) equals the eager
    float-mask route, on this device, in float32."""
    tok = tiny_tokenizer(chat_template=True)
    mods = TrainConfig(attention_bias=True, attention_bias_complexity=True).mods_dict()
    routed = _perturbed(InstructModel(tiny_model("llama", len(tok), attn="sdpa"), mods)).to(device)
    eager = _perturbed(InstructModel(tiny_model("llama", len(tok), attn="eager"), mods)).to(device)
    assert routed._bias_route and not eager._bias_route
    batch = _batch(tok, device)
    real = batch["sample_idx"] >= 0
    a, b = routed(batch)["logits"][real], eager(batch)["logits"][real]
    err = float((a - b).abs().max())
    return err < 1e-4, f"max |sdpa route - eager| = {err:.1e}"


def check_grad_checkpointing(device, work):
    """Every modification on: the gradients with activation checkpointing equal those without."""
    tok = tiny_tokenizer(chat_template=True)
    batch = _batch(tok, device)
    grads = []
    for checkpointing in (False, True):
        obj = _all_mods_objective(tok, device)
        if checkpointing:                  # the same call as the trainer's --grad-checkpointing
            base = obj.model.base
            enable = getattr(base, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        obj.train()
        obj(batch)["loss"].backward()
        grads.append({n: p.grad for n, p in obj.named_parameters() if p.grad is not None})
    missing = grads[0].keys() ^ grads[1].keys()
    err = max(float((grads[0][n] - grads[1][n]).abs().max() / grads[0][n].abs().max().clamp(min=1e-12))
              for n in grads[0].keys() & grads[1].keys())
    return not missing and err < 1e-4, f"{len(grads[0])} gradients, max relative difference {err:.1e}"


def _records_file(work: Path) -> Path:
    path = work / "records.jsonl"
    if not path.exists():
        write_records(path, toy_records(48))
    return path


def _train(work: Path, name: str, device, model=None, tok=None, **cfg):
    tok = tok or tiny_tokenizer(chat_template=True)
    model = model or tiny_model("llama", len(tok))
    return run_train(_records_file(work), work / name, TrainConfig(**cfg), model=model, tokenizer=tok,
                     progress=False), tok


ALL_MODS = dict(inst_tokens=True, segment_embedding=True, attention_bias=True, attention_bias_complexity=True,
                fusion=True, fusion_dim=16, fusion_heads=2, temperature_head=True, reasoning_head=True,
                task_cls_weight=0.1, inst_repr_weight=0.1, task_weighting="uncertainty", instruction_mask_prob=0.1,
                ewc_weight=0.01, ewc_samples=4, l2sp_weight=1e-4, grad_checkpointing=True)


def check_all_mods_run(device, work):
    """Six steps with every modification and loss term on (start-up check included): finite, logged."""
    summary, _ = _train(work, "all-mods", device, max_steps=6, batch_size=4, lr=1e-2, max_length=128,
                        warmup_ratio=0.1, **ALL_MODS)
    log = [json.loads(line) for line in (work / "all-mods" / "log.jsonl").read_text().splitlines()]
    finite = all(math.isfinite(e["loss"]) for e in log)
    ok = finite and len(log) == 6 and summary["base_check"]["dataforge_loss"] == summary["base_check"]["model_loss"]
    return ok, (f"{summary['precision']}, loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}, "
                f"{summary['tokens_per_s'] or 0:.0f} tok/s, start-up check {summary['base_check']['model_loss']}")


def check_save_load_generate(device, work):
    """The saved model, loaded on this device and on the CPU, gives the same logits and the same greedy text."""
    if not (work / "all-mods" / "model").exists():
        raise Skip("needs the all-modifications run")
    on_dev, tok, meta = load_instruct(work / "all-mods", device)
    on_cpu, _, _ = load_instruct(work / "all-mods", "cpu")
    fmt = PromptFormatter(tok, meta["prompt_format"], bool(meta["mods"].get("inst_tokens")), meta["max_length"])
    exs = encode_records(toy_records(4), fmt, TaskInfo(meta["tasks"], {}, {}), {})
    batch = collate([exs], tok.pad_token_id)
    a = on_dev({k: v.to(device) for k, v in batch.items()})["logits"].float().cpu()
    b = on_cpu(batch)["logits"]
    err = float((a - b).abs().max())
    texts = [m.generate(fmt, "Add the two numbers and give the result.", "2 3", max_new_tokens=8,
                        temperature=0.0)[0] for m in (on_dev, on_cpu)]
    return err < 1e-3 and texts[0] == texts[1], f"max |device - cpu| logits {err:.1e}, greedy text {texts[0]!r}"


def check_resume(device, work):
    """With dropout on, a run interrupted after step 2 and resumed logs the same losses as an unbroken one:
    the checkpoint carries the RNG state the dropout masks come from (CUDA's on a GPU)."""
    import dataforge.train.trainer as trainer

    def gpt2(tok):
        model = tiny_model("gpt2", len(tok))
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.1
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.1
        return model

    cfg = dict(max_steps=4, save_every=2, batch_size=4, lr=3e-3, max_length=128, segment_embedding=True)
    tok = tiny_tokenizer()
    _train(work, "unbroken", device, model=gpt2(tok), tok=tok, **cfg)
    real_lr = trainer.lr_factor

    def stop_at_3(step, total, warmup):
        if step == 2:
            raise KeyboardInterrupt
        return real_lr(step, total, warmup)

    trainer.lr_factor = stop_at_3
    try:
        tok = tiny_tokenizer()
        _train(work, "resumed", device, model=gpt2(tok), tok=tok, **cfg)
    except Exception as exc:               # the interrupt ends the run with a DataforgeError
        if "interrupted at step 2" not in str(exc):
            raise
    finally:
        trainer.lr_factor = real_lr
    torch.manual_seed(12345)               # the resumed run must not depend on the process's RNG
    if device.type == "cuda":
        torch.cuda.manual_seed_all(12345)
    tok = tiny_tokenizer()
    _train(work, "resumed", device, model=gpt2(tok), tok=tok, **cfg)
    logs = [[json.loads(line)["loss"] for line in (work / n / "log.jsonl").read_text().splitlines()]
            for n in ("unbroken", "resumed")]
    err = max(abs(a - b) for a, b in zip(*logs))
    return len(logs[1]) == 4 and err < 1e-4, f"losses {['%.4f' % v for v in logs[0]]}, max difference {err:.1e}"


def check_ddp(device, work):
    """Two processes (NCCL on 2 GPUs; gloo in the CPU dry run) make exactly the step of one process that
    accumulates the same two micro-batches: same loss, same unclipped gradients (AdamW's first moment after
    one step is 0.1 * g), ranks in sync."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device.type == "cuda" and torch.cuda.device_count() < 2:
        raise Skip(f"needs 2 GPUs, found {torch.cuda.device_count()}")
    tok = tiny_tokenizer()
    base = work / "tiny-base"
    tiny_model("llama", len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    cfg = dict(max_steps=2, batch_size=2, max_length=128, segment_embedding=True, task_weighting="uncertainty",
               eval_fraction=0.0, max_grad_norm=0.0, save_every=1)
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "dataforge", "train", str(_records_file(work)), "-o", str(work / "ddp"),
           "--model", str(base), "--no-progress"] + flags
    procs = [subprocess.Popen(cmd, env=env | {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    if any(p.returncode for p in procs):
        return False, "a process failed: " + (outs[0][1] + outs[1][1]).strip().splitlines()[-1][:200]
    run_train(_records_file(work), work / "accum", TrainConfig(grad_accum=2, **cfg),
              model=AutoModelForCausalLM.from_pretrained(base).to(device), tokenizer=AutoTokenizer.from_pretrained(base),
              progress=False)
    summary = json.loads((work / "ddp" / "summary.json").read_text())
    losses = [json.loads((work / n / "log.jsonl").read_text().splitlines()[0])["loss"] for n in ("ddp", "accum")]
    moments = [load_file(str(work / n / "checkpoints" / "step-0000001" / "optimizer.safetensors")) for n in ("ddp", "accum")]
    keys = [k for k in moments[0] if k.endswith("exp_avg")]
    err = max(float((moments[0][k] - moments[1][k]).abs().max() / moments[1][k].abs().max().clamp(min=1e-12))
              for k in keys)
    ok = summary["world_size"] == 2 and summary["ranks_in_sync"] and abs(losses[0] - losses[1]) < 1e-5 and err < 1e-4
    return ok, (f"{'nccl' if device.type == 'cuda' else 'gloo'}: step-1 loss {losses[0]:.6f} vs one process "
                f"{losses[1]:.6f}, gradients max relative difference {err:.1e}, ranks in sync: {summary['ranks_in_sync']}")


CHECKS = [("mixed precision (bf16 where native)", check_precision),
          ("fp16 + gradient scaler step", check_fp16_scaler),
          ("attention-bias kernel vs eager", check_bias_kernel),
          ("gradient checkpointing", check_grad_checkpointing),
          ("all modifications on: 6 steps", check_all_mods_run),
          ("save -> load -> generate", check_save_load_generate),
          ("resume is exact (RNG state)", check_resume),
          ("2-process DDP", check_ddp)]


def main(args: argparse.Namespace) -> int:
    if args.device is None:
        if not torch.cuda.is_available():
            print("gpu_smoke: no CUDA GPU found (torch.cuda.is_available() is False): nothing checked.\n"
                  "For a dry run of these checks on the CPU: scripts/gpu_smoke.sh --device cpu")
            return 0
        args.device = "cuda"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        os.environ["LOCAL_RANK"] = str(device.index or 0)      # run_train trains on cuda:LOCAL_RANK
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name(device)
        about = (f"{name}, {torch.cuda.device_count()} GPU(s), torch {torch.__version__}, CUDA {torch.version.cuda}, "
                 f"native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(4, os.cpu_count() or 1)))
        about = f"CPU dry run, torch {torch.__version__}"
    print(f"dataforge GPU smoke: {about}", flush=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="dataforge-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for title, fn in CHECKS:
        t = time.time()
        try:
            ok, detail = fn(device, work)
            status = PASS if ok else FAIL
        except Skip as exc:
            status, detail = NOT_RUN, str(exc)
        except Exception as exc:  # a crash is a failure, with where it happened
            status = FAIL
            where = traceback.extract_tb(exc.__traceback__)[-1]
            detail = f"{type(exc).__name__}: {str(exc)[:160]} ({Path(where.filename).name}:{where.lineno})"
        rows.append((title, status, f"{time.time() - t:.1f}s", detail))
        print(f"  {title}: {status}", flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check'.ljust(width)}  {'result':8}  {'time':>6}  detail")
    for title, status, secs, detail in rows:
        print(f"{title.ljust(width)}  {status:8}  {secs:>6}  {detail}")
    failed = sum(r[1] == FAIL for r in rows)
    not_run = sum(r[1] == NOT_RUN for r in rows)
    print(f"\n{len(rows) - failed - not_run} passed, {failed} failed, {not_run} not run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
