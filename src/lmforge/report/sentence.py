"""The line `lmforge run` prints when a stage finishes: a sentence with units, from the stage's metrics."""

from __future__ import annotations

from pathlib import Path

from lmforge.report.reading import read_metrics
from lmforge.report.summary import summarize


def duration(seconds: float) -> str:
    """12.3s, 4m 02s, 1h 05m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def count(n: float) -> str:
    """6.2M, 25.6k, 765."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def stage_done_line(stage: str, seconds: float, stage_dir: Path) -> str:
    """`[lmforge] pretrain: done in 4m 02s: 765 steps, 6.2M tokens (25.6k tokens/s), val 2.319 bits
    per byte`; a stage that logs no training metrics gets the time alone."""
    line = f"[lmforge] {stage}: done in {duration(seconds)}"
    s = summarize(read_metrics(stage_dir / "metrics.jsonl"))
    parts = []
    if s.get("steps"):
        parts.append(f"{s['steps']:,} steps")
    if s.get("tokens"):
        rate = f" ({count(s['tokens_per_s'])} tokens/s)" if s.get("tokens_per_s") else ""
        parts.append(f"{count(s['tokens'])} tokens{rate}")
    if s.get("final_val_bpb") is not None:
        parts.append(f"val {s['final_val_bpb']:.3f} bits per byte")
    elif s.get("final_val_loss") is not None:
        parts.append(f"val loss {s['final_val_loss']:.3f}")
    return f"{line}: {', '.join(parts)}" if parts else line
