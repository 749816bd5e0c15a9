"""Export a checkpoint for other tools: Hugging Face transformers (`--format hf`) or llama.cpp (`--format gguf`).

`hf` writes a directory that `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load with no custom code (LlamaForCausalLM for arch llama,
GPT2LMHeadModel for arch gpt2; the tokenizer carries the chat template). `gguf` writes one file
for llama.cpp / llama-cpp-python / Ollama with the tokenizer in its metadata.

Without --force nothing is replaced but an empty directory or an earlier `hf` export (a directory
holding only what its lmforge-manifest.json lists); an existing .gguf file needs --force too.

examples:
  lmforge export --model runs/shakespeare --format hf --out exports/shakespeare-hf
  lmforge export --model runs/shakespeare/sft --format gguf --out exports/shakespeare.gguf --dtype f16
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint, stage or run directory")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf", help="output format (default: hf)")
    p.add_argument("--out", required=True, help="output directory (hf) or .gguf file (gguf)")
    p.add_argument(
        "--dtype",
        default="",
        help="weights dtype: hf float32|float16|bfloat16 (default: the checkpoint's); gguf f32|f16 (default: f32)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even when it is an existing file or a directory this command did not write",
    )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.checkpoint.consolidated import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(args.model)
    model, tokenizer = load_model(ckpt)
    if args.format == "hf":
        from lmforge.model.convert import export_hf

        out = export_hf(model, tokenizer, args.out, dtype=args.dtype or None, force=args.force)
    else:
        from lmforge.model.gguf import export_gguf

        out = export_gguf(model, tokenizer, args.out, dtype=args.dtype or "f32", force=args.force)
    print(f"exported {ckpt} -> {out} ({args.format})")
    return 0
