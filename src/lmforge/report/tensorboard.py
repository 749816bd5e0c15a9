"""`lmforge report RUN_DIR --tensorboard`: every stage's metrics.jsonl as TensorBoard event files in
RUN_DIR/tensorboard/<stage>/, for runs trained without `train.tensorboard` (same tags as a live run:
`train/*`, `val/*`, the stage's train settings as hparams)."""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.report.reading import TRAIN_STAGES, read_metrics, read_recipe
from lmforge.train.metrics import TensorBoardSink


def stage_train_settings(recipe: dict, stage: str) -> dict:
    section = recipe.get("train") if stage == "pretrain" else (recipe.get(stage) or {}).get("train")
    return section if isinstance(section, dict) else {}


def convert_run(run_dir: Path) -> list[Path]:
    """Write RUN_DIR/tensorboard/<stage>/ for every stage with metrics (replacing an earlier
    conversion); returns the folders written."""
    _, recipe = read_recipe(run_dir)
    written = []
    for stage in TRAIN_STAGES:
        records = read_metrics(run_dir / stage / "metrics.jsonl")
        if not records:
            continue
        out = run_dir / "tensorboard" / stage
        shutil.rmtree(out, ignore_errors=True)
        sink = TensorBoardSink(out, stage_train_settings(recipe, stage))
        for record in records:
            sink.log(record)
        sink.close()
        written.append(out)
    return written
