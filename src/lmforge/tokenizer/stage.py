"""The `tokenizer` stage of `lmforge run`: train the BPE tokenizer into RUN_DIR/tokenizer/."""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.fileio import atomic_rename_dir, atomic_write_json


def stage_inputs(recipe, run_dir: Path) -> list[str]:  # recipe: lmforge.config.Recipe
    """The recipe's tokenizer inputs, or the data stage's documents when none are given."""
    return list(recipe.tokenizer.inputs) or [str(Path(run_dir) / "data" / "docs")]


def train_stage(recipe, run_dir: Path) -> None:
    from lmforge.data.readers import read_inputs
    from lmforge.tokenizer import Tokenizer

    cfg = recipe.tokenizer
    texts = (doc.text for doc in read_inputs(stage_inputs(recipe, run_dir), text_field=cfg.text_field))
    tok = Tokenizer.train(
        texts,
        cfg.vocab_size,
        pattern=cfg.pattern,
        special_tokens=cfg.special_tokens,
        workers=cfg.workers,
        max_chars=cfg.max_chars,
    )
    final = Path(run_dir) / "tokenizer"
    tmp = final.with_name(".tokenizer.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save(tmp)
    atomic_write_json(tmp / "train_stats.json", tok.train_stats)
    atomic_rename_dir(tmp, final)
    print(f"[lmforge] tokenizer: {tok!r}, {tok.train_stats}", flush=True)
