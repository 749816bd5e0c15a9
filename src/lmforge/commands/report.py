"""Write a run's report card: RUN_DIR/report.html (self-contained, plots inline) and report.md.

It shows the resolved recipe, the hardware, data statistics per filter rule, tokenizer and shard
statistics, loss and learning-rate curves, throughput and MFU, the post-training demo's before/after
metrics, evaluation tables per stage and sample generations; parts a run lacks are left out.
`lmforge run` rewrites it at the end of every run.

examples:
  lmforge report runs/shakespeare
  scripts/render_report.sh runs/shakespeare/report.html report.png   (headless Chromium screenshot)
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory (e.g. runs/shakespeare)")


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from lmforge.errors import LmforgeError
    from lmforge.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise LmforgeError(f"{run_dir}: no such run directory")
    html_path, md_path = write_report(run_dir)
    print(f"wrote {html_path} and {md_path}")
    return 0
