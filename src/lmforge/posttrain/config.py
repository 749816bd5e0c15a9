"""The `sft`, `dpo`, `reward` and `rl` recipe sections.

Each section carries its own `train` block (the one TrainConfig of the one Trainer) with
post-training defaults: fewer steps, a smaller learning rate. An empty `data` list means
"use the demo tasks built from the embedded plays" (`sft.demo` sets how many).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.tasks.config import DemoConfig
from lmforge.train.config import TrainConfig


@dataclass
class PostTrainConfig(TrainConfig):
    """TrainConfig with post-training defaults: short runs, small batches, no periodic eval or
    checkpoints (a final checkpoint is always written). A subclass, not a default instance, so
    that overriding one key (--sft.train.lr) keeps the other post-training defaults."""

    max_steps: int = 60
    lr: float = 3e-4
    warmup_steps: int = 5
    batch_tokens: int = 4096
    micro_batch: int = 8
    eval_every: int = 0
    checkpoint_every: int = 0
    samples: int = 0


@dataclass
class PreferenceTrainConfig(PostTrainConfig):
    """Preference objectives (DPO, reward): micro_batch counts pairs (2 rows each)."""

    lr: float = 1e-4
    micro_batch: int = 8
    batch_tokens: int = 4096  # with seq_len 256: 2 micro-batches, 16 pairs per step


@dataclass
class RLTrainConfig(PostTrainConfig):
    """GRPO: one rollout batch (prompts_per_step x num_generations rows) per step."""

    max_steps: int = 50
    lr: float = 2e-5
    warmup_steps: int = 0
    batch_tokens: int = 2048  # = micro_batch x seq_len: one micro-batch (one rollout) per step


@dataclass
class SFTConfig:
    data: list[str] = field(default_factory=list)  # messages / Alpaca JSONL; empty: the demo task builder
    packing: bool = True  # several short conversations per row (no attention across them)
    max_len: int = 0  # longest conversation kept in tokens (0: train.seq_len); longer ones are truncated
    demo: DemoConfig = field(default_factory=DemoConfig)
    train: PostTrainConfig = field(default_factory=PostTrainConfig)


@dataclass
class DPOConfig:
    data: list[str] = field(default_factory=list)  # preference JSONL; empty: the demo pairs
    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0  # robust DPO (cDPO) epsilon, sigmoid loss only
    precompute_ref: bool = False  # true: reference log-probs computed once up front (no second model)
    rpo_alpha: float = 0.0  # weight of the chosen completions' per-token NLL added to the loss (RPO; 0: plain DPO)
    train: PreferenceTrainConfig = field(default_factory=PreferenceTrainConfig)

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        if self.rpo_alpha < 0:
            raise ValueError("rpo_alpha must be >= 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")


@dataclass
class RewardConfig:
    data: list[str] = field(default_factory=list)  # preference JSONL; empty: the demo pairs
    center_rewards: float = 0.0  # TRL's center_rewards_coefficient
    train: PreferenceTrainConfig = field(default_factory=PreferenceTrainConfig)


@dataclass
class RLConfig:
    reward: str = "lmforge.tasks.demo:play_title_reward"  # "model" or "module:function"
    reward_model: str = ""  # reward model checkpoint (reward: model); empty: RUN_DIR/reward
    data: list[str] = field(default_factory=list)  # prompt JSONL; empty: the demo questions
    num_generations: int = 8  # completions per prompt (the group)
    prompts_per_step: int = 4
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    epsilon: float = 0.2  # PPO clip range
    beta: float = 0.0  # KL (k3) weight to the reference; 0: no reference model
    scale_rewards: Literal["group", "none"] = "group"
    num_iterations: int = 1  # optimizer steps per rollout batch (TRL's num_iterations; 1: ratio is 1 in value)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)

    def validate(self) -> None:
        if self.num_iterations < 1:
            raise ValueError("num_iterations must be >= 1")
