"""The `sft`, `dpo`, `reward` and `rl` recipe sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.train.config import TrainConfig


def _posttrain_defaults() -> TrainConfig:
    return TrainConfig(max_steps=200, lr=3e-4, warmup_steps=10, eval_every=50, checkpoint_every=100)


@dataclass
class SFTConfig:
    data: list[str] = field(default_factory=list)  # messages / Alpaca JSONL; empty: the demo task builder
    train: TrainConfig = field(default_factory=_posttrain_defaults)


@dataclass
class DPOConfig:
    data: list[str] = field(default_factory=list)
    beta: float = 0.1
    train: TrainConfig = field(default_factory=_posttrain_defaults)


@dataclass
class RewardConfig:
    data: list[str] = field(default_factory=list)
    train: TrainConfig = field(default_factory=_posttrain_defaults)


@dataclass
class RLConfig:
    reward: str = ""  # "model" or "module:function"
    train: TrainConfig = field(default_factory=_posttrain_defaults)
