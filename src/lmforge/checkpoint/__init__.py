"""Checkpoints: resolve, read and write them (consolidated safetensors and sharded DCP), and load a
model from one. Every layer above the model reads checkpoints through here.

    from lmforge.checkpoint import load_model
    model, tokenizer = load_model("runs/shakespeare")   # a checkpoint, stage or run directory
"""

from lmforge.checkpoint.consolidated import load_model, resolve_checkpoint

__all__ = ["load_model", "resolve_checkpoint"]
