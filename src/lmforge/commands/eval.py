"""Evaluate a checkpoint: bits per byte, multiple-choice and generation tasks, with standard errors.

Task specs (comma-separated):
  plays, plays_chat, plays_pref   the demo's held-out questions from the plays (chance 25% / 50%)
  plays_answer                    the chatbot's greedy replies to them: a listed title (format), the
                                  right one (acc), and who-speaks, continue-speech, everyday-question formats
  val_bpb                         bits per byte on the run's val token shard
  mmlu:FILE.csv  hellaswag:FILE.jsonl  arc:FILE.jsonl  mc:FILE.jsonl  gen:FILE.jsonl
  bpb:FILE.txt|FILE.jsonl|TOKENS_DIR   (a bare PATH works too; the kind is guessed)
Multiple-choice scoring is lm-eval's (context + " " + choice; acc and acc_norm by characters).

examples:
  lmforge eval --model runs/shakespeare --tasks plays,val_bpb
  lmforge eval --model runs/shakespeare/sft --tasks mmlu:data/test/astronomy_test.csv --shots 5 --limit 100
  lmforge eval --model CKPT --tasks bpb:wiki.txt --out wiki.json
  lmforge eval --compare runs/a runs/b            (their eval/results.json side by side)
  lmforge eval --register-lm-eval                 (then: lm_eval --model lmforge --model_args path=CKPT ...)
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="checkpoint, stage or run directory (default: none)")
    p.add_argument(
        "--tasks", default="plays,val_bpb", help="comma-separated task specs (default: %(default)s)"
    )
    p.add_argument(
        "--limit", type=int, default=0, help="first N items per task, 0 = all (default: %(default)s)"
    )
    p.add_argument("--shots", type=int, default=0, help="few-shot examples per item (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=1234, help="few-shot seed: Random(seed + index) (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=16, help="sequences per forward pass (default: %(default)s)"
    )
    p.add_argument(
        "--max-gen-toks", type=int, default=32, help="generation tasks: new tokens (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--out", default="results.json", help="results file to write (default: %(default)s)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="print two results side by side")
    p.add_argument(
        "--register-lm-eval", action="store_true", help="install the hook that lets lm_eval find 'lmforge'"
    )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from lmforge.errors import LmforgeError

    if args.register_lm_eval:
        from lmforge.eval.lm_eval_hook import write_pth

        print(f"wrote {write_pth()}: `lm_eval --model lmforge --model_args path=CKPT` now works")
        return 0
    if args.compare:
        from lmforge.eval.api import compare_table, load_results

        a, b = (load_results(x) for x in args.compare)
        print(compare_table(a, b, Path(args.compare[0]).name or "A", Path(args.compare[1]).name or "B"))
        return 0
    if not args.model:
        raise LmforgeError("give --model CKPT (or --compare RUN_A RUN_B)")
    from lmforge.eval.api import dumps, evaluate_checkpoint, format_table
    from lmforge.fileio import atomic_write_text

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    entry = evaluate_checkpoint(
        args.model,
        tasks,
        shots=args.shots,
        limit=args.limit,
        seed=args.seed,
        batch_size=args.batch_size,
        max_gen_toks=args.max_gen_toks,
        device=args.device,
    )
    atomic_write_text(args.out, dumps({"checkpoints": [entry]}))
    print(format_table(entry))
    print(f"wrote {args.out}")
    return 0
