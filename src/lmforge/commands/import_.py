"""Import a local Hugging Face checkpoint (LlamaForCausalLM or GPT2LMHeadModel) as an lmforge checkpoint.

The result is an ordinary weights-only lmforge checkpoint (model.safetensors, config.json,
tokenizer/) that `generate`, `chat`, `serve`, `eval`, `export` accept and that fine-tuning starts
from (`lmforge sft RECIPE --sft.train.init_from CKPT`). A byte-level BPE tokenizer.json is
converted into an lmforge tokenizer; when its ids are laid out differently from lmforge's
(bytes 0-255, then merges, then specials), the embedding and LM-head rows are reordered to
match, so the model computes the same function. Other tokenizers (SentencePiece, prefix-space
ByteLevel, normalizers) are refused with the reason. Nothing is downloaded: DIR must be a local
directory, and a model.safetensors.index.json may name weight files inside DIR only. An existing
--out is replaced only when it is empty or an earlier import (a checkpoint holding only what its
lmforge-manifest.json lists), or with --force.

examples:
  lmforge import --from-hf ./TinyLlama-local --out runs/imported/checkpoint
  lmforge import --from-hf exports/shakespeare-hf --out runs/roundtrip --max-seq-len 512
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-hf", dest="from_hf", required=True, help="local Hugging Face model directory")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even when it is a non-empty directory that import did not write",
    )
    p.add_argument("--dtype", default="float32", help="float32|float16|bfloat16 (default: float32)")
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=0,
        help="context length for the imported model (default: config.json's)",
    )


WRITER = "lmforge import"


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.checkpoint.consolidated import save_model_checkpoint
    from lmforge.errors import LmforgeError
    from lmforge.fileio import check_replaceable
    from lmforge.model.convert import load_hf

    check_replaceable(args.out, WRITER, args.force)  # before the (long) conversion
    model, tokenizer, report = load_hf(args.from_hf, dtype=args.dtype, max_seq_len=args.max_seq_len or None)
    if tokenizer is None:
        raise LmforgeError(f"cannot convert the tokenizer: {report['tokenizer_error']}")
    extra = {"imported_from": str(args.from_hf), "reordered_vocab": report["reordered"]}
    out = save_model_checkpoint(
        model, tokenizer, args.out, stage="import", step=0, extra=extra, written_by=WRITER
    )
    moved = "; vocabulary rows reordered into lmforge's id layout" if report["reordered"] else ""
    print(f"imported {args.from_hf} ({report['arch']}, {model.num_params():,} params) -> {out}{moved}")
    return 0
