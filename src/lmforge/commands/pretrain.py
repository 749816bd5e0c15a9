"""Pretrain a model on a recipe's token shards (the recipe's `pretrain` stage).

Runs the stages before it first when they are not done yet (data, tokenizer, tokenize), then
trains until train.max_steps or train.max_minutes, whichever comes first, and always saves a
final checkpoint to RUN_DIR/pretrain/checkpoints/step_NNNNNN. Prints the validation bits per
byte and a few samples at the end; metrics go to RUN_DIR/pretrain/metrics.jsonl (and TensorBoard
/ W&B with --train.tensorboard true / --train.wandb.mode offline).

Resuming: by default (train.resume auto) a run continues exactly from the latest checkpoint in
RUN_DIR/pretrain when it was made with the same settings (a killed run picks up where it
stopped; raising --train.max_steps extends a finished run); --resume insists on that, --fresh
starts over (the old checkpoints move to RUN_DIR/pretrain.previous).

examples:
  lmforge pretrain recipes/shakespeare.yaml
  lmforge pretrain shakespeare --train.max_minutes 2 --train.lr 3e-3
  lmforge pretrain shakespeare --resume --train.max_steps 2000
  lmforge pretrain shakespeare --fresh --model.n_layer 8 --train.compile true
  torchrun --nproc-per-node 8 -m lmforge pretrain RECIPE --parallel.dp_shard 8   # FSDP (docs/distributed.md)
"""

from __future__ import annotations

import argparse

from lmforge.commands._common import add_recipe_argument

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint (error if none)"
    )
    group.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    add_recipe_argument(p, ["name", "seed", "run_dir", "model", "train", "parallel"])


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.recipe import load_recipe
    from lmforge.run import run_recipe

    overrides = list(overrides)
    if args.resume:
        overrides += ["--train.resume", "always"]
    elif args.fresh:
        overrides += ["--train.resume", "never"]
    recipe = load_recipe(args.recipe, overrides)
    stages = list(recipe.stages)
    before = stages[: stages.index("pretrain")] if "pretrain" in stages else []
    if before:  # under torchrun rank 0 prepares them; the others poll for its markers (no timeout)
        run_recipe(recipe, only=before)
    run_recipe(recipe, only=["pretrain"], force=args.resume or args.fresh)
    return 0
