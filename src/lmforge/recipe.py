"""The recipe: one YAML file whose top-level sections map onto each subsystem's config dataclass.

This module only composes the sections; loading, overrides and validation are the generic
helpers of `lmforge.config`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config import from_dict, parse_overrides, read_yaml, set_dotted
from lmforge.data.config import DataConfig
from lmforge.distributed.config import ParallelConfig
from lmforge.errors import LmforgeError
from lmforge.eval.config import EvalConfig
from lmforge.model.config import ModelConfig, preset_training
from lmforge.posttrain.config import DPOConfig, RewardConfig, RLConfig, SFTConfig
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.train.config import TrainConfig


@dataclass
class Recipe:
    """A whole run: every stage's settings. Sections default to sensible values."""

    name: str = "run"  # the run's name; the run directory is runs/<name>
    seed: int = 1337  # every random choice of every stage derives from it
    run_dir: str = ""  # default: runs/<name>
    # the stages `lmforge run` runs, in order
    stages: list[str] = field(default_factory=lambda: ["data", "tokenizer", "tokenize", "pretrain"])
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


def load_recipe(path: str | Path | None, overrides: list[str] | dict | None = None) -> Recipe:
    """Read a recipe file (or none: all defaults), apply overrides, validate, return it."""
    source = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        raw = read_yaml(resolve_recipe_path(path))
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            set_dotted(raw, key, value, source="override")
    else:
        for key, value in parse_overrides(overrides or []):
            set_dotted(raw, key, value, source="command line")
    recipe = from_dict(Recipe, raw, where="", source=source)
    apply_preset_training(recipe, raw.get("train") or {})
    return recipe


def apply_preset_training(recipe: Recipe, train_raw: dict) -> None:
    """With `model.preset` set, the preset's lr and batch_tokens replace the generic defaults of
    the keys the recipe and the command line leave unset, and say so."""
    if not recipe.model.preset:
        return
    lr, batch_tokens = preset_training(recipe.model.preset)
    applied = []
    if "lr" not in train_raw:
        recipe.train.lr = lr
        applied.append(f"train.lr {lr:g}")
    if "batch_tokens" not in train_raw:
        recipe.train.batch_tokens = batch_tokens
        applied.append(f"train.batch_tokens {batch_tokens:,}")
    if applied:
        print(
            f"[lmforge] model.preset {recipe.model.preset}: {' and '.join(applied)} from the preset table",
            file=sys.stderr,
            flush=True,
        )


def resolve_recipe_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    for candidate in (Path("recipes") / p, Path("recipes") / f"{p}.yaml"):
        if candidate.exists():
            return candidate
    raise LmforgeError(f"recipe {path}: file not found (looked in . and recipes/)")
