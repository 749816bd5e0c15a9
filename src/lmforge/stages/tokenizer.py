"""The `tokenizer` stage of `lmforge run`: train the BPE tokenizer into RUN_DIR/tokenizer/."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from lmforge.data.inputs import InputReport, read_input_documents
from lmforge.fileio import atomic_rename_dir, atomic_write_json
from lmforge.stages.data import output_dir
from lmforge.tokenizer import Tokenizer


def stage_inputs(recipe: Any, run_dir: Path) -> list[str]:
    """The recipe's tokenizer inputs, or the data stage's documents when none are given."""
    return list(recipe.tokenizer.inputs) or [str(output_dir(recipe, run_dir) / "docs")]


def train_stage(recipe: Any, run_dir: Path) -> None:
    cfg = recipe.tokenizer
    report = InputReport()
    docs = read_input_documents(stage_inputs(recipe, run_dir), cfg.text_field, cfg.bad_input, report)
    tok = Tokenizer.train(
        (doc.text for doc in docs),
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
    atomic_write_json(
        tmp / "train_stats.json", {**tok.train_stats, "skipped": report.skipped, "replaced": report.replaced}
    )
    atomic_rename_dir(tmp, final)
    print(f"[lmforge] tokenizer: {tok!r}, {tok.train_stats}", flush=True)
    if report.summary():
        print(f"[lmforge] tokenizer: {report.summary()}", file=sys.stderr, flush=True)
