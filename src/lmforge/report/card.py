"""Writing the report card: collect the run directory, draw the plots, render both files."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

from lmforge.fileio import atomic_write_text
from lmforge.report.html import render_html
from lmforge.report.markdown import render_markdown
from lmforge.report.plots import panel_png, panels
from lmforge.report.reading import collect
from lmforge.report.summary import device, git_commit, software


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.html and RUN_DIR/report.md; returns their paths."""
    run_dir = Path(run_dir)
    report = collect(run_dir)
    report["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report.update(device=device(), software=software(), commit=git_commit())
    report["plots"] = {}
    for stage, info in report["stages"].items():
        drawn = [
            (p.title, base64.b64encode(panel_png(p, stage)).decode("ascii")) for p in panels(info["metrics"])
        ]
        if drawn:
            report["plots"][stage] = drawn
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, render_html(report))
    atomic_write_text(md_path, render_markdown(report))
    return html_path, md_path
