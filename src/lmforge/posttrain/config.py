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
    """GRPO: one rollout batch (prompts_per_step x num_generations rows) per micro-batch; with
    these defaults one micro-batch, so one rollout, per step (on each data-parallel rank)."""

    max_steps: int = 50
    lr: float = 2e-5
    warmup_steps: int = 0
    batch_tokens: int = 2048  # = micro_batch x seq_len: one micro-batch (one rollout) per step
    # off: the GRPO surrogate is centred on 0 (advantages have mean 0 per group), so "5 x its running
    # mean" flags ordinary steps as spikes and three of them in a row stop the run; NaN is still caught
    spike_factor: float = 0.0


@dataclass
class LoRAConfig:
    """Low-rank adapters (LoRA, through peft) on the model's linear layers; rank 0: off (full fine-tuning).

    With rank > 0 only the adapters train (everything else is frozen) and a checkpoint holds only
    them plus a pointer to (and a content hash of) the checkpoint the stage started from
    (lmforge.posttrain.lora)."""

    rank: int = 0  # adapter rank r (0: no adapters, every weight trains)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input while training
    # lmforge's linear modules that get adapters, matched as peft does (a name or a dotted suffix:
    # wq, wk, wv, wo, MLP w1/w2/w3 or fc/proj, or layers.0.attn.wq); unknown names are refused
    targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo"])

    def validate(self) -> None:
        if self.rank < 0:
            raise ValueError("rank must be >= 0 (0: no adapters)")
        if self.alpha <= 0:
            raise ValueError("alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.rank > 0 and not self.targets:
            raise ValueError("targets must name at least one linear module when rank > 0")


@dataclass
class SFTConfig:
    data: list[str] = field(default_factory=list)  # messages / Alpaca JSONL; empty: the demo task builder
    packing: bool = True  # several short conversations per row (no attention across them)
    max_len: int = 0  # longest conversation kept in tokens (0: train.seq_len); longer ones are truncated
    # fraction of each micro-batch's rows that are pretraining windows from RUN_DIR/tokens (0: none);
    # keeps the base model's language (lmforge.posttrain.mixing)
    mix_pretrain: float = 0.0
    demo: DemoConfig = field(default_factory=DemoConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: PostTrainConfig = field(default_factory=PostTrainConfig)

    def validate(self) -> None:
        if not 0.0 <= self.mix_pretrain <= 0.5:
            raise ValueError("mix_pretrain must be in [0, 0.5]")


@dataclass
class DPOConfig:
    data: list[str] = field(default_factory=list)  # preference JSONL; empty: the demo pairs
    beta: float = 0.1  # DPO's temperature: how far the policy may move from the reference
    loss: Literal["sigmoid", "ipo"] = "sigmoid"  # sigmoid (DPO) or ipo
    label_smoothing: float = 0.0  # robust DPO (cDPO) epsilon, sigmoid loss only
    # true (the default): the starting policy's log-probs of every pair are computed once before the
    # first step and no second model is held during training; false: a frozen copy of the starting
    # policy, built and sharded like it (FSDP: each rank holds its shard), scores every batch
    precompute_ref: bool = True
    # weight of the chosen completions' per-token NLL added to the loss (RPO; 0: plain DPO)
    rpo_alpha: float = 0.0
    # weight of a pretraining-NLL term: the mean per-token NLL of mix_pretrain_rows windows from
    # RUN_DIR/tokens per micro-batch, added per pair (0: none; lmforge.posttrain.mixing)
    mix_pretrain: float = 0.0
    mix_pretrain_rows: int = 2  # pretraining windows per micro-batch when mix_pretrain > 0
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: PreferenceTrainConfig = field(default_factory=PreferenceTrainConfig)

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        if self.rpo_alpha < 0:
            raise ValueError("rpo_alpha must be >= 0")
        if self.mix_pretrain < 0 or self.mix_pretrain_rows < 1:
            raise ValueError("mix_pretrain must be >= 0 and mix_pretrain_rows >= 1")
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
    # prompts per rollout batch
    prompts_per_step: int = 4  # prompts per rollout (one micro-batch) on each data-parallel rank
    max_new_tokens: int = 16  # longest completion, in tokens
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts (1: off)
    epsilon: float = 0.2  # PPO clip range
    beta: float = 0.0  # KL (k3) weight to the reference; 0: no reference model
    # group: advantages divided by the group's reward std; none: not scaled
    scale_rewards: Literal["group", "none"] = "group"
    # optimizer steps per rollout batch (TRL's num_iterations; 1: the ratio is 1 in value)
    num_iterations: int = 1
    # held-out prompts whose mean sampled reward (num_generations each, fixed seeds) is measured
    # before and after the stage: the demo's held-out which-play questions, or eval_data's first ones
    eval_prompts: int = 64
    eval_data: list[str] = field(default_factory=list)  # prompt JSONL (the data layout); empty: the demo's
    train: RLTrainConfig = field(default_factory=RLTrainConfig)

    def validate(self) -> None:
        if self.num_iterations < 1:
            raise ValueError("num_iterations must be >= 1")
        if self.eval_prompts < 0:
            raise ValueError("eval_prompts must be >= 0 (0: no held-out reward)")
