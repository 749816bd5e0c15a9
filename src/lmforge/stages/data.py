"""The `data` stage of `lmforge run`: the recipe's data section -> RUN_DIR/<data.output>/."""

from __future__ import annotations

from pathlib import Path

from lmforge.recipe import Recipe


def output_dir(recipe: Recipe, run_dir: Path) -> Path:
    return Path(run_dir) / recipe.data.output


def run_stage(recipe: Recipe, run_dir: Path) -> None:
    from lmforge.data.pipeline import run_pipeline

    stats = run_pipeline(recipe.data, output_dir(recipe, run_dir))
    inp, out = stats["input"], stats["output"]
    print(
        f"[lmforge] data: {inp['documents']:,} documents in -> {out['documents']:,} kept "
        f"({out['characters']:,} characters, {len(out['shards'])} shard(s)); "
        f"{stats['rejected_records']:,} rejected records; see {output_dir(recipe, run_dir) / 'summary.md'}",
        flush=True,
    )
