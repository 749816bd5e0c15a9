"""The run's report card: RUN_DIR/report.html (self-contained, plots inline as PNG) and report.md.

Everything comes from files the stages left in the run directory, and every part is optional
(a run that only pretrained gets a report without eval tables):

  config.yaml                      the resolved recipe (shown, and read for each stage's seq_len)
  <stage>/_complete.json           each finished stage's wall seconds
  data/stats.json                  documents and characters kept / dropped per pipeline step and reason
  tokenizer/, tokens/meta.json     vocabulary, specials, token counts, bytes per token
  <stage>/metrics.jsonl            every logged series (one plot each) and tokens processed
  <stage>/checkpoints/*/config.json  the model: parameters and FLOPs per token
  <stage>/demo_eval.json           the post-training demo's before / after metrics
  eval/results.json, samples.json  evaluation tables per checkpoint (val bpb per stage) and samples

The modules: reading (the files), summary (figures and costs), tables (text cells), plots,
html and markdown (the two writers), card (write_report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.report.card import write_report
from lmforge.report.reading import collect, read_metrics
from lmforge.report.summary import summarize

__all__ = ["collect", "read_metrics", "refresh_report", "report_stage", "summarize", "write_report"]


def report_stage(recipe: Any, run_dir: Path) -> None:
    html_path, _ = write_report(run_dir)
    print(f"[lmforge] report: {html_path}", flush=True)


def refresh_report(run_dir: Path) -> None:
    """Rewrite the report at the end of `lmforge run`; a report problem never fails the run."""
    try:
        html_path, _ = write_report(run_dir)
        print(f"[lmforge] report: {html_path}", flush=True)
    except Exception as e:  # noqa: BLE001 - the report is a by-product of the run
        print(f"[lmforge] report: not written ({type(e).__name__}: {e})", flush=True)
