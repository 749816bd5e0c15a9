"""The `tokenize` stage of `lmforge run`: documents -> token shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.data.inputs import InputReport, read_input_documents
from lmforge.shards import tokenize_documents
from lmforge.stages.tokenizer import stage_inputs
from lmforge.tokenizer import Tokenizer


def tokenize_stage(recipe: Any, run_dir: Path) -> None:
    """The `tokenize` stage of `lmforge run`: documents -> RUN_DIR/tokens with RUN_DIR/tokenizer."""
    cfg = recipe.tokenizer
    tokenizer = Tokenizer.load(Path(run_dir) / "tokenizer")
    specs = stage_inputs(recipe, run_dir)
    report = InputReport()
    meta = tokenize_documents(
        tokenizer,
        read_input_documents(specs, cfg.text_field, cfg.bad_input, report),
        Path(run_dir) / "tokens",
        val_fraction=cfg.val_fraction,
        seed=recipe.seed,
        workers=cfg.workers,
        extra_meta={
            "inputs": specs,
            "skipped": report.skipped,
            "replaced": report.replaced,
        },  # filled while reading
    )
    print(
        f"[lmforge] tokenize: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
        f"from {meta['documents']} documents ({meta['dtype']})",
        flush=True,
    )
