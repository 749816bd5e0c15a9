"""The `train` and `parallel` recipe sections (shared by every objective: pretrain, SFT, DPO, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    max_steps: int = 1000
    max_minutes: float = 0.0  # 0: no time budget
    batch_tokens: int = 16_384  # global batch in tokens; gradient accumulation makes up the rest
    micro_batch: int = 16  # sequences per forward pass per device
    seq_len: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # WSD: the final fraction of steps that decays
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False
    activation_checkpointing: bool = False
    device: str = "auto"
    eval_every: int = 100
    eval_tokens: int = 65_536
    sample_every: int = 0
    checkpoint_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    init_from: str = ""  # a checkpoint to start from (fine-tuning)
    tensorboard: bool = False
    wandb: bool = False
    spike_factor: float = 5.0  # a loss above spike_factor x its running mean is a spike
    max_bad_steps: int = 3  # consecutive bad steps before a rollback to the last checkpoint


@dataclass
class ParallelConfig:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    pp_schedule: Literal["1f1b", "gpipe"] = "1f1b"
    pp_microbatches: int = 4
