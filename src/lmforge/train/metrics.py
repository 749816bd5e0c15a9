"""Training metrics: MFU, memory, and the sinks (metrics.jsonl, TensorBoard, W&B offline).

MFU = flops_per_token · tokens/s / peak (torchtitan's definition: 6·N + the attention term,
no causal discount). The peak is the device's dense bf16 peak from PEAK_FLOPS (matched on the
CUDA device name); on CPU, where nobody publishes one, it is measured once per process as the
fp32 matmul throughput of a 1024² GEMM (`measure_cpu_peak`); `train.peak_flops` overrides both.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (FLOP/s), longest name first wins (torchtitan tools/utils.py + vendor sheets).
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H20": 148e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
    "MI300X": 1307e12,
    "MI250X": 383e12,
}

_cpu_peak: float | None = None


def measure_cpu_peak(n: int = 1024, repeats: int = 5) -> float:
    """fp32 GEMM throughput of this process's CPU threads (best of `repeats`), FLOP/s."""
    global _cpu_peak
    if _cpu_peak is None:
        g = torch.Generator().manual_seed(0)  # never touch the global RNG: resumed runs must replay it exactly
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        _cpu_peak = 2 * n**3 / best
    return _cpu_peak


def device_peak_flops(device: torch.device, override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for `device`."""
    if override > 0:
        return override, "train.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key in sorted(PEAK_FLOPS, key=len, reverse=True):
            if key.lower() in name.lower():
                return PEAK_FLOPS[key], f"bf16 peak of {key}"
        return PEAK_FLOPS["A100"], f"unknown GPU {name!r}: A100 bf16 peak assumed"
    return measure_cpu_peak(), "measured CPU fp32 GEMM"


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA max allocated, else the process's max resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class MetricsLogger:
    """metrics.jsonl (one JSON object per line) plus optional TensorBoard and W&B (offline) sinks."""

    def __init__(self, out_dir: Path, *, tensorboard: bool = False, wandb: bool = False, run_name: str = "", config=None):
        self.path = out_dir / "metrics.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self.tb = None
        self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError:
                print("[lmforge] train.wandb is true but wandb is not installed (pip install 'lmforge[track]'); "
                      "logging to metrics.jsonl only", flush=True)
            else:
                os.environ.setdefault("WANDB_MODE", "offline")
                self.wandb = wandb_mod.init(
                    project="lmforge", name=run_name or None, dir=str(out_dir), mode="offline", config=config
                )

    def log(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()
        step = int(record.get("step", 0))
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        scalars.pop("step", None)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}" if not k.startswith("val") else f"val/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records past `after_step` (written after the checkpoint a run resumes from)."""
    from lmforge.fileio import atomic_write_text

    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if int(rec.get("step", 0)) <= after_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
