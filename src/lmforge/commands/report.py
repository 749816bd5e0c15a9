"""Write a run's report card: RUN_DIR/report.html (self-contained, plots inline) and report.md.

It opens with a summary (parameters, tokens, training FLOPs, wall time per stage, device, git
commit) and a line per stage with the held-out bits per byte after it and what it cost, then one
plot per series each stage logged (loss, val bpb, lr, grad norm, tokens/s, MFU, memory, DPO rewards,
RL reward, ...), throughput and MFU, evaluation tables per stage and side by side, sample
generations (post-trained stages as conversations), the post-training demo's before/after metrics,
data statistics per filter rule, tokenizer and shard statistics and the resolved recipe; parts a
run lacks are left out. `lmforge run` rewrites it at the end of every run.

examples:
  lmforge report runs/shakespeare
  lmforge report runs/shakespeare --tensorboard && tensorboard --logdir runs/shakespeare/tensorboard
  scripts/render_report.sh runs/shakespeare/report.html report.png   (headless Chromium screenshot)
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory (e.g. runs/shakespeare)")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also convert every stage's metrics.jsonl to RUN_DIR/tensorboard/<stage>/ "
        "(tensorboard --logdir RUN_DIR/tensorboard)",
    )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from lmforge.errors import LmforgeError
    from lmforge.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise LmforgeError(f"{run_dir}: no such run directory")
    html_path, md_path = write_report(run_dir)
    print(f"wrote {html_path} and {md_path}")
    if args.tensorboard:
        from lmforge.report.tensorboard import convert_run

        for folder in convert_run(run_dir):
            print(f"wrote {folder}")
    return 0
