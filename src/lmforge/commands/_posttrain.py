"""The post-training verbs (`sft`, `dpo`, `reward`, `rl`) from one factory: each runs its stage
of the recipe, forced, with the recipe's dotted overrides."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from lmforge.commands._common import add_recipe_argument


def posttrain_verb(stage: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
    """(add_arguments, main) of the verb that runs post-training stage `stage`."""

    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_recipe_argument(p, ["name", "seed", "run_dir", stage])

    def main(args: argparse.Namespace, overrides: list[str]) -> int:
        from lmforge.recipe import load_recipe
        from lmforge.run import run_recipe

        run_recipe(load_recipe(args.recipe, overrides), only=[stage], force=True)
        return 0

    return add_arguments, main
