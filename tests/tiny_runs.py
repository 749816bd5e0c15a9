"""A run directory with a tiny random 'pretrain' checkpoint, for the post-training stage tests."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.checkpoint.consolidated import save_model_checkpoint
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tasks.demo import build_demo_tasks
from lmforge.tokenizer import Tokenizer


def save_tiny_pretrain(run_dir: Path, recipe) -> Path:
    """RUN_DIR/pretrain/checkpoints/step_000010: a 2-layer random model with a tokenizer trained on
    the recipe's demo SFT text; returns run_dir."""
    tasks = build_demo_tasks(recipe.sft.demo, recipe.seed)
    text = "\n".join(m["content"] for conv in tasks.sft for m in conv)
    tok = Tokenizer.train([text], vocab_size=600, progress=False, workers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=tok.vocab_size, max_seq_len=128)
    )
    save_model_checkpoint(
        model, tok, run_dir / "pretrain" / "checkpoints" / "step_000010", stage="pretrain", step=10
    )
    return run_dir
