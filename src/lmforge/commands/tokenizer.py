"""Train a byte-level BPE tokenizer, or look at how one encodes and decodes text.

`train` reads .txt/.md files or folders, .jsonl(.gz/.zst) / parquet with a text field, WARC/HTML
and `embedded:shakespeare`, and writes DIR/lmforge_tokenizer.json plus a Hugging Face
tokenizer.json (+ tokenizer_config.json with the chat template).

examples:
  lmforge tokenizer train --input embedded:shakespeare --vocab-size 4096 --out runs/tok
  lmforge tokenizer train --input corpus/ data.jsonl.zst --vocab-size 32768 --pattern gpt2 --out tok32k
  lmforge tokenizer encode --tokenizer runs/tok "To be, or not to be"
  lmforge tokenizer decode --tokenizer runs/tok 2093 11 420 677
"""

from __future__ import annotations

import argparse
import sys

from lmforge.tokenizer.config import TokenizerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train a tokenizer on text files / corpora", formatter_class=fmt)
    t.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="files, folders, globs or embedded:NAME"
    )
    t.add_argument("--vocab-size", type=int, default=8192, help="256 bytes + merges + special tokens")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory")
    t.add_argument(
        "--pattern", default="gpt4", help="split regex: gpt4, gpt2, cl100k, nanochat, or a literal regex"
    )
    t.add_argument(
        "--special",
        nargs="*",
        default=TokenizerConfig().special_tokens,
        metavar="TOKEN",
        help="special tokens, given ids after the merges in this order",
    )
    t.add_argument("--text-field", default="text", help="text key of .jsonl / parquet records")
    t.add_argument(
        "--max-chars",
        type=int,
        default=2_000_000_000,
        help="train on the first this-many characters of the inputs (default 2e9, as nanochat; 0: all)",
    )
    t.add_argument("--workers", type=int, default=0, help="chunk-counting processes (0: all cores)")
    t.add_argument(
        "--bad-input",
        choices=["error", "skip", "replace"],
        default="error",
        help="a record that is not valid UTF-8 (or malformed): stop with an error naming the file, "
        "skip it, or (text files) decode with U+FFFD replacements; skipped records and replacements "
        "are reported",
    )

    e = sub.add_parser("encode", help="print the ids (and pieces) of a text", formatter_class=fmt)
    e.add_argument("--tokenizer", required=True, metavar="DIR")
    e.add_argument("text", nargs="?", help="text to encode (default: read stdin)")
    e.add_argument(
        "--allow-special", action="store_true", help="encode special-token strings as special tokens"
    )
    e.add_argument("--pieces", action="store_true", help="also print each token's text")

    d = sub.add_parser("decode", help="print the text of a list of ids", formatter_class=fmt)
    d.add_argument("--tokenizer", required=True, metavar="DIR")
    d.add_argument(
        "ids", nargs="*", type=int, help="token ids (default: read whitespace-separated ids from stdin)"
    )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.tokenizer import Tokenizer

    if args.action == "train":
        return _train(args)
    tok = Tokenizer.load(args.tokenizer)
    if args.action == "encode":
        text = args.text if args.text is not None else sys.stdin.read()
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
        print(" ".join(map(str, ids)))
        if args.pieces:
            for i in ids:
                print(f"{i}\t{tok.id_to_bytes(i)!r}")
        print(f"# {len(ids)} tokens, {len(text.encode('utf-8'))} bytes", file=sys.stderr)
        return 0
    ids = args.ids or [int(x) for x in sys.stdin.read().split()]
    print(tok.decode(ids))
    return 0


def _train(args: argparse.Namespace) -> int:
    from lmforge.data.inputs import InputReport, read_input_documents
    from lmforge.tokenizer import Tokenizer

    report = InputReport()
    docs = read_input_documents(args.input, args.text_field, args.bad_input, report)
    tok = Tokenizer.train(
        (d.text for d in docs),
        args.vocab_size,
        pattern=args.pattern,
        special_tokens=args.special,
        workers=args.workers,
        max_chars=args.max_chars,
    )
    tok.save(args.out)
    print(f"{tok!r} -> {args.out}")
    print(
        f"trained on {tok.train_stats['chars']:,} characters, "
        f"{tok.train_stats['distinct_chunks']:,} distinct chunks"
    )
    if report.summary():
        print(report.summary(), file=sys.stderr)
    return 0
