"""Run a recipe's stages in order (data, tokenizer, tokenize, pretrain, sft, dpo, eval, report).

Each stage writes a completion marker holding the hash of its config and of the stages before
it: a second `lmforge run` skips finished stages, and changing a stage's settings re-runs that
stage and every stage after it. A re-run training stage continues its checkpoint when only
max_steps, max_minutes or the eval / log / checkpoint cadence changed (raising max_steps extends
it); when its data, objective or other train settings changed, or with --force, it trains from
scratch and the old checkpoints and metrics move to RUN_DIR/<stage>.previous. The resolved recipe
is written to RUN_DIR/config.yaml.

examples:
  lmforge run recipes/shakespeare.yaml
  lmforge run shakespeare --stages pretrain --train.max_steps 500
  lmforge run shakespeare --force --model.n_layer 4
  lmforge run shakespeare --help      (every recipe key with this recipe's value and what it does)
"""

from __future__ import annotations

import argparse

from lmforge.commands._common import add_recipe_argument, all_sections

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stages", default="", help="comma-separated stages to run (default: the recipe's `stages`)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="re-run the selected stages even if finished; a training stage trains from scratch "
        "(its old checkpoints move to RUN_DIR/<stage>.previous) unless its train.resume is 'always'",
    )
    add_recipe_argument(p, all_sections())


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.recipe import load_recipe
    from lmforge.run import run_recipe

    recipe = load_recipe(args.recipe, overrides)
    only = [s.strip() for s in args.stages.split(",") if s.strip()] or None
    run_recipe(recipe, only=only, force=args.force, fresh=args.force)
    return 0
