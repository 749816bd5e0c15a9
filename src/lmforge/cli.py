"""The `lmforge` command: one verb per stage. Thin: each verb lives in lmforge.commands.<module>.

A command module provides `add_arguments(parser)` and `main(args, overrides) -> int | None`,
and must be cheap to import (torch and friends are imported inside `main`).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import sys

from lmforge import __version__
from lmforge.errors import LmforgeError

# verb, module under lmforge.commands, one line of help. Only verbs that exist are listed.
VERBS: list[tuple[str, str, str]] = [
    ("run", "run", "run a recipe's stages in order, skipping the ones already done"),
    ("data", "data", "raw text / web crawls -> clean, filtered, deduplicated documents"),
    ("tokenizer", "tokenizer", "train a byte-level BPE tokenizer; encode / decode text with one"),
    ("tokenize", "tokenize", "tokenize documents into train/val token shards (memmap) + meta.json"),
    ("pretrain", "pretrain", "pretrain a model on a recipe's token shards (resumable, time-budgeted)"),
    ("sft", "sft", "supervised fine-tuning on chat data (loss on assistant tokens only)"),
    ("dpo", "dpo", "direct preference optimization from preference pairs"),
    ("reward", "reward", "train a reward model (Bradley-Terry) on preference pairs"),
    ("rl", "rl", "GRPO reinforcement learning from a reward function or reward model"),
    ("generate", "generate", "generate text from a prompt (or a file of prompts) with a trained model"),
    ("chat", "chat", "chat with a model in the terminal (history, system prompt, streamed replies)"),
    ("serve", "serve", "serve a model: OpenAI-compatible API (streaming) and a web chat page"),
    ("export", "export", "export a checkpoint as a Hugging Face model directory or a GGUF file"),
    ("import", "import_", "import a local Hugging Face Llama / GPT-2 checkpoint as an lmforge checkpoint"),
    ("eval", "eval", "evaluate a checkpoint: bits per byte, multiple-choice / generation tasks, lm-eval"),
    ("report", "report", "write a run's report card (report.html + report.md)"),
    ("plan", "plan", "per-device memory for a model and parallel layout; compute-optimal size for a budget"),
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `lmforge` parser and each verb's subparser by verb."""
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Build a language model from scratch: data, tokenizer, pretraining, "
        "post-training, evaluation, serving, export. `lmforge VERB --help` for each verb.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    verb_parsers: dict[str, argparse.ArgumentParser] = {}
    for verb, module_name, help_line in VERBS:
        module = importlib.import_module(f"lmforge.commands.{module_name}")
        p = sub.add_parser(
            verb,
            help=help_line,
            description=(module.__doc__ or help_line).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_module=module, _accepts_overrides=getattr(module, "ACCEPTS_OVERRIDES", False))
        verb_parsers[verb] = p
    return parser, verb_parsers


HELP_FLAGS = ("-h", "--help")


def unknown_verb_message(word: str) -> str:
    verbs = [v for v, _, _ in VERBS]
    close = difflib.get_close_matches(word, verbs, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"lmforge: unknown verb {word!r}{hint} (verbs: {', '.join(verbs)}; lmforge --help)"


def print_recipe_help(verb_parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """`lmforge VERB RECIPE [overrides] --help`: the verb's help with the recipe's values in the key
    list. argparse prints help as soon as it meets the flag, before the recipe is read, so the flag
    is taken out and the rest parsed first. False when there is no recipe to read."""
    sections = verb_parser.get_default("_recipe_sections")
    if not sections:
        return False
    rest = [a for a in argv if a not in HELP_FLAGS]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args, extra = verb_parser.parse_known_args(rest)
    except SystemExit:  # no recipe given, or a malformed flag: the plain help
        return False
    if not getattr(args, "recipe", None):
        return False
    from lmforge.commands._common import recipe_epilog
    from lmforge.recipe import load_recipe, resolve_recipe_path

    try:
        resolve_recipe_path(args.recipe)
    except LmforgeError:  # a sub-verb (lmforge data train-classifier --help), not a recipe
        return False

    recipe = load_recipe(args.recipe, extra if args._accepts_overrides else [])
    verb_parser.epilog = recipe_epilog(sections, recipe, source=args.recipe)
    verb_parser.print_help()
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, verb_parsers = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in verb_parsers:
        print(unknown_verb_message(argv[0]), file=sys.stderr)
        return 2
    if len(argv) > 1 and argv[0] in verb_parsers and any(a in HELP_FLAGS for a in argv[1:]):
        try:
            if print_recipe_help(verb_parsers[argv[0]], argv[1:]):
                return 0
        except LmforgeError as e:
            print(f"lmforge {argv[0]}: error: {e}", file=sys.stderr)
            return 2
    args, extra = parser.parse_known_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    if extra and not args._accepts_overrides:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc = args._module.main(args, extra)
        return int(rc or 0)
    except LmforgeError as e:
        if getattr(args, "debug", False):
            raise
        print(f"lmforge {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.verb}: interrupted", file=sys.stderr)
        return 130
