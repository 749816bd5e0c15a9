"""Tokenize documents into token shards for pretraining: DIR/{train,val}.bin + meta.json.

Ids are stored flat (uint16 when the vocabulary fits, else uint32) with <|eos|> after every
document; documents are split into train/val deterministically from --seed. Inputs as for
`lmforge tokenizer train` (files, folders, .jsonl(.zst), parquet, embedded:shakespeare, ...).

examples:
  lmforge tokenize --tokenizer runs/tok --input embedded:shakespeare --out runs/tokens
  lmforge tokenize --tokenizer runs/tok --input runs/shakespeare/data/docs --out tokens --val-fraction 0.01
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--tokenizer", required=True, metavar="DIR", help="a directory written by `lmforge tokenizer train`"
    )
    p.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="files, folders, globs or embedded:NAME"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the shards")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of documents for val (default: 0.05)"
    )
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val split (default: 1337)")
    p.add_argument(
        "--text-field", default="text", help="text key of .jsonl / parquet records (default: text)"
    )
    p.add_argument(
        "--bad-input",
        choices=["error", "skip", "replace"],
        default="error",
        help="non-UTF-8 / malformed records: stop naming the file, skip, or (text files) decode with U+FFFD "
        "(default: error)",
    )
    p.add_argument("--workers", type=int, default=0, help="encoding threads (default: 0 = all cores)")


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    import sys

    from lmforge.data.inputs import InputReport, read_input_documents
    from lmforge.errors import LmforgeError
    from lmforge.shards import tokenize_documents
    from lmforge.tokenizer import Tokenizer

    if not 0.0 <= args.val_fraction < 1.0:
        raise LmforgeError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    tok = Tokenizer.load(args.tokenizer)
    report = InputReport()
    meta = tokenize_documents(
        tok,
        read_input_documents(args.input, args.text_field, args.bad_input, report),
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        extra_meta={"inputs": args.input, "skipped": report.skipped, "replaced": report.replaced},
    )
    text_bytes = meta["train_bytes"] + meta["val_bytes"]
    bytes_per_token = text_bytes / max(1, meta["train_tokens"] + meta["val_tokens"] - meta["documents"])
    print(
        f"{meta['documents']} documents -> {args.out}: {meta['train_tokens']:,} train tokens, "
        f"{meta['val_tokens']:,} val tokens ({meta['dtype']}), "
        f"{bytes_per_token:.2f} bytes/token"
    )
    if report.summary():
        print(report.summary(), file=sys.stderr)
    return 0
