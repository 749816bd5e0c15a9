"""The `train` recipe section (shared by every objective: pretrain, SFT, DPO, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.config import logging_only


@dataclass
class WandbConfig:
    """Weights & Biases logging (the `track` extra). offline runs sync later with `wandb sync DIR`."""

    mode: Literal["disabled", "offline", "online"] = "disabled"  # online needs `wandb login` or WANDB_API_KEY
    project: str = "lmforge"  # the W&B project
    entity: str = ""  # the W&B team or user (empty: your default entity)


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps (the run also stops at max_minutes)
    max_minutes: float = 0.0  # 0: no time budget
    batch_tokens: int = 16_384  # global batch in tokens; gradient accumulation makes up the rest
    micro_batch: int = 16  # sequences per forward pass per device
    seq_len: int = 256  # tokens per training sequence
    lr: float = 1e-3  # peak learning rate (AdamW; Muon's is muon_lr)
    min_lr_ratio: float = 0.1  # the schedule decays to lr x min_lr_ratio
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    # cosine decay, warmup-stable-decay, or constant after warm-up
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # WSD: the final fraction of steps that decays
    # steps: the schedule runs over max_steps (exactly reproducible); time: over max_minutes (a
    # time-budgeted run always finishes its decay, but the lr then depends on the machine's speed)
    schedule_by: Literal["steps", "time"] = "steps"
    weight_decay: float = 0.1  # decoupled weight decay of the 2-D weights
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    eval_every: int = 100  # validate every N steps (0: only at the end)
    eval_tokens: int = 65_536  # validation tokens per evaluation
    sample_every: int = 0  # print sample generations every N steps (0: never)
    checkpoint_every: int = 200  # checkpoint every N steps (0: only the final one)
    keep_last: int = 2  # checkpoints kept (older ones are deleted)
    # Under more than one process: write each checkpoint with DCP's async_save (the step waits only
    # for the copy to CPU memory; the files are written in the background and published when done)
    async_checkpoint: bool = False
    log_every: int = logging_only(1)  # write a metrics record (metrics.jsonl, TensorBoard, W&B) every N steps
    init_from: str = ""  # a checkpoint to start from (fine-tuning)
    tensorboard: bool = logging_only(False)  # mirror the metrics into <stage>/tensorboard
    wandb: WandbConfig = logging_only(default_factory=WandbConfig)  # Weights & Biases (mode, project, entity)
    spike_factor: float = 5.0  # a loss above spike_factor x its running mean is a spike
    max_bad_steps: int = 3  # consecutive bad steps before a rollback to the last checkpoint
    max_rollbacks: int = 5  # give up (error) after this many rollbacks
    grad_accum: int = 0  # 0: batch_tokens / (micro_batch * seq_len * dp_size), which must be an integer
    resume: Literal["auto", "always", "never"] = "auto"  # auto: resume when out_dir has a matching checkpoint
    peak_flops: float = 0.0  # MFU denominator; 0: the device's bf16 peak from the table (CPU: measured)
    samples: int = 3  # sample generations printed at the end of the pretrain stage (0: none)
    sample_tokens: int = 64  # tokens per sample generation
    # prompts of the sample generations
    sample_prompts: list[str] = field(default_factory=lambda: ["The ", "O, ", "What "])
    # Learning efficiency (docs/training.md). muon: torch.optim.Muon for the 2-D matrices inside the
    # blocks, AdamW for embeddings, head, norms and biases. Per-role learning rates; 0 = train.lr.
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.02  # Muon's learning rate (optimizer: muon)
    muon_momentum: float = 0.95  # Muon's momentum (optimizer: muon)
    # precision of Muon's Newton-Schulz iteration; auto: bfloat16 on CUDA (torch's choice), float32
    # on the CPU, where bf16 matmuls without bf16 hardware made the demo's steps 3x slower
    muon_ns_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    embedding_lr: float = 0.0  # learning rate of the token embedding (0: lr)
    head_lr: float = 0.0  # learning rate of the LM head (0: lr)
    scalar_lr: float = 0.0  # learning rate of norms and biases (0: lr)
    # Pretraining windows: random offsets, or starting at document starts (each document tiled in
    # seq_len steps from its first token); doc_mask: no attention across a document boundary.
    window_start: Literal["random", "document"] = "random"
    doc_mask: bool = False  # no attention across a document boundary inside a window
    # doc_mask's attention: auto picks flex_attention on CUDA (not under pipeline parallelism or
    # attention dropout), else SDPA's dense mask; sdpa forces the dense mask; flex forces flex_attention
    doc_mask_kernel: Literal["auto", "sdpa", "flex"] = "auto"

    def validate(self) -> None:
        for name in ("micro_batch", "seq_len", "batch_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_steps < 0 or self.max_minutes < 0:
            raise ValueError("max_steps and max_minutes must be >= 0")
        if self.keep_last < 1 or self.log_every < 1:
            raise ValueError("keep_last and log_every must be >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError("decay_fraction must be in (0, 1]")
        for name in ("muon_lr", "embedding_lr", "head_lr", "scalar_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
