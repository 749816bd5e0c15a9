"""The `sft`, `dpo`, `reward` and `rl` recipe sections.

Each section carries its own `train` block (the one TrainConfig of the one Trainer) with
post-training defaults: fewer steps, a smaller learning rate. An empty `data` list means
"use the demo tasks built from the embedded plays" (`sft.demo` sets how many).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.train.config import TrainConfig


def _posttrain_defaults() -> TrainConfig:
    return TrainConfig(
        max_steps=200, lr=3e-4, warmup_steps=10, eval_every=0, checkpoint_every=0, batch_tokens=4096, micro_batch=8
    )


@dataclass
class DemoConfig:
    """The demo tasks derived from the plays (lmforge.posttrain.demo_tasks), held out by scene."""

    eval_scene_fraction: float = 0.25  # scenes of each play kept for evaluation only
    which_play: int = 3000  # SFT conversations: "which play is this passage from" (4 choices)
    who_speaks: int = 600  # SFT conversations: "who speaks these lines"
    continue_speech: int = 600  # SFT conversations: "continue this speech"
    preference_pairs: int = 3000  # DPO / reward training pairs
    eval_items: int = 200  # held-out 4-choice questions and held-out preference pairs, each
    passage_lines: int = 4  # verse lines shown in a "which play" passage

    def validate(self) -> None:
        if not 0.0 < self.eval_scene_fraction < 1.0:
            raise ValueError("eval_scene_fraction must be in (0, 1)")
        if self.passage_lines < 1:
            raise ValueError("passage_lines must be at least 1")


@dataclass
class SFTConfig:
    data: list[str] = field(default_factory=list)  # messages / Alpaca JSONL; empty: the demo task builder
    packing: bool = True  # several short conversations per row (no attention across them)
    max_len: int = 0  # longest conversation kept in tokens (0: train.seq_len); longer ones are truncated
    demo: DemoConfig = field(default_factory=DemoConfig)
    train: TrainConfig = field(default_factory=_posttrain_defaults)


@dataclass
class DPOConfig:
    data: list[str] = field(default_factory=list)  # preference JSONL; empty: the demo pairs
    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0  # robust DPO (cDPO) epsilon, sigmoid loss only
    precompute_ref: bool = True  # reference log-probs computed once (no second model in memory)
    train: TrainConfig = field(default_factory=lambda: _posttrain_defaults_with(lr=1e-4, micro_batch=8))

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")


@dataclass
class RewardConfig:
    data: list[str] = field(default_factory=list)  # preference JSONL; empty: the demo pairs
    center_rewards: float = 0.0  # TRL's center_rewards_coefficient
    train: TrainConfig = field(default_factory=lambda: _posttrain_defaults_with(lr=1e-4, micro_batch=8))


@dataclass
class RLConfig:
    reward: str = "lmforge.posttrain.demo_tasks:play_title_reward"  # "model" or "module:function"
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
    train: TrainConfig = field(default_factory=lambda: _posttrain_defaults_with(lr=2e-5, max_steps=50))


def _posttrain_defaults_with(**changes) -> TrainConfig:
    cfg = _posttrain_defaults()
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg
