"""Import a local Hugging Face checkpoint as an lmforge checkpoint: LlamaForCausalLM (Llama 2, 3.x with
RoPE scaling llama3, SmolLM2), MistralForCausalLM, Qwen2ForCausalLM (Qwen2, Qwen2.5),
Qwen3ForCausalLM or GPT2LMHeadModel.

The result is an ordinary weights-only lmforge checkpoint (model.safetensors, config.json,
tokenizer/) that `generate`, `chat`, `serve`, `eval`, `export` accept and that fine-tuning starts
from (`lmforge sft --sft.train.init_from CKPT`). A byte-level BPE tokenizer.json without a chat
template of its own is converted into an lmforge tokenizer (the embedding and LM-head rows are
reordered into lmforge's id layout when they differ, so the model computes the same function);
any other tokenizer.json (SentencePiece, normalizers, other pre-tokenizers, the model's own chat
template) is kept as-is and run by the `tokenizers` library, with the model's chat template for
chat and fine-tuning. Nothing is downloaded: DIR must be a local
directory, and a model.safetensors.index.json may name weight files inside DIR only. An existing
--out is replaced only when it is empty or an earlier import (a checkpoint holding only what its
lmforge-manifest.json lists), or with --force.

examples:
  lmforge import --from-hf ./SmolLM2-135M --out runs/smollm2/checkpoint
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
    from lmforge.model.hf_import import load_hf

    check_replaceable(args.out, WRITER, args.force)  # before the (long) conversion
    model, tokenizer, report = load_hf(
        args.from_hf, dtype=args.dtype, max_seq_len=args.max_seq_len or None, progress=None
    )
    if tokenizer is None:
        raise LmforgeError(f"no usable tokenizer: {report['tokenizer_note']}")
    extra = {
        "imported_from": str(args.from_hf),
        "reordered_vocab": report["reordered"],
        "tokenizer": report["tokenizer"],
    }
    out = save_model_checkpoint(
        model, tokenizer, args.out, stage="import", step=0, extra=extra, written_by=WRITER
    )
    family = report["hf_family"] or report["arch"]
    if report["tokenizer"] == "kept":
        note, source = report["tokenizer_note"], tokenizer.chat_template_source
        how = f"tokenizer.json kept as-is ({note}), chat template: {source}"
    else:
        how = "tokenizer converted" + (", vocabulary rows reordered" if report["reordered"] else "")
    print(f"imported {args.from_hf} ({family}, {model.num_params():,} params) -> {out}; {how}")
    return 0
