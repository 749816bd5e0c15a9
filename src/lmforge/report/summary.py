"""The run's figures: per-stage summaries and costs, and the summary block (parameters, tokens,
FLOPs, wall time per stage, device, git commit)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _numbers(metrics: list[dict], key: str) -> list[float]:
    return [
        float(m[key])
        for m in metrics
        if isinstance(m.get(key), (int, float)) and not isinstance(m[key], bool)
    ]


def summarize(metrics: list[dict]) -> dict[str, Any]:
    """Last step and losses, median throughput and MFU (first step excluded: warm-up), tokens processed."""
    if not metrics:
        return {}
    train = [m for m in metrics if "loss" in m]
    steady = train[1:] or train

    def median(key: str) -> float | None:
        vals = sorted(_numbers(steady, key))
        return vals[len(vals) // 2] if vals else None

    val = [m for m in metrics if isinstance(m.get("val_loss"), (int, float))]
    mem, elapsed = _numbers(metrics, "mem_gb"), _numbers(metrics, "elapsed_s")
    return {
        "steps": max((int(m.get("step", 0)) for m in metrics), default=0),
        "final_loss": train[-1]["loss"] if train else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "final_val_bpb": next((m["val_bpb"] for m in reversed(metrics) if "val_bpb" in m), None),
        "tokens_per_s": median("tokens_per_s"),
        "mfu": median("mfu"),
        "mem_gb": max(mem, default=None),
        "elapsed_s": max(elapsed, default=None),
        "tokens": processed_tokens(train),
    }


def processed_tokens(steps: list[dict]) -> int | None:
    """Tokens through the model over the logged steps: tokens/s x seconds of each step (all ranks)."""
    pairs = [(m["tokens_per_s"], m["step_s"]) for m in steps if {"tokens_per_s", "step_s"} <= m.keys()]
    return round(sum(float(t) * float(s) for t, s in pairs)) if pairs else None


def eval_bpb(report: dict, stage: str) -> float | None:
    """val_bpb of the eval stage's entry for `stage` (the same held-out shard for every stage)."""
    entries = [e for e in (report.get("eval") or {}).get("checkpoints", []) if e.get("stage") == stage]
    for entry in reversed(entries):
        task = (entry.get("tasks") or {}).get("val_bpb") or {}
        value = (task.get("metrics") or {}).get("bits_per_byte")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def stage_costs(report: dict) -> list[dict]:
    """One row per stage, in run order: val bpb after it (and the change) and what it cost."""
    order = list(report.get("seconds") or {})
    order += [s for s in report["stages"] if s not in order]
    rows, previous_bpb = [], None
    for stage in order:
        info = report["stages"].get(stage) or {}
        summary, model = info.get("summary") or {}, info.get("model") or {}
        bpb, source = eval_bpb(report, stage), "eval"
        if bpb is None and summary.get("final_val_bpb") is not None:
            bpb, source = float(summary["final_val_bpb"]), "training val"
        tokens = summary.get("tokens")
        flops = tokens * model["flops_per_token"] if tokens and model.get("flops_per_token") else None
        rows.append(
            {
                "stage": stage,
                "seconds": (report.get("seconds") or {}).get(stage),
                "steps": summary.get("steps"),
                "tokens": tokens,
                "flops": flops,
                "val_bpb": bpb,
                "bpb_source": source if bpb is not None else None,
                "bpb_change": bpb - previous_bpb if bpb is not None and previous_bpb is not None else None,
            }
        )
        previous_bpb = bpb if bpb is not None else previous_bpb
    return rows


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the git checkout the report is written from (marked when files are modified), else unknown."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    modified = " (with uncommitted changes)" if dirty.returncode == 0 and dirty.stdout.strip() else ""
    return head.stdout.strip() + modified


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device() -> str:
    """The accelerator of the machine writing the report (`lmforge run` writes it where it trained)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores"


def software() -> str:
    import torch

    return f"Python {platform.python_version()}, torch {torch.__version__}, {platform.platform(terse=True)}"
