"""Training metrics: MFU, memory, and the sinks (metrics.jsonl, TensorBoard, W&B).

MFU = flops_per_token · tokens/s / peak (torchtitan's definition: 6·N + the attention term,
no causal discount). The peak is the device's dense bf16 peak from PEAK_FLOPS (matched on the
CUDA device name); on CPU, where nobody publishes one, it is measured once per process as the
fp32 matmul throughput of a 1024² GEMM (`measure_cpu_peak`); `train.peak_flops` overrides both.
"""

from __future__ import annotations

import json
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
        g = torch.Generator().manual_seed(
            0
        )  # never touch the global RNG: resumed runs must replay it exactly
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


def tensorboard_tag(key: str) -> str:
    """`val_loss` -> `val/loss`, `loss` -> `train/loss`: one prefix, never doubled."""
    if key.startswith("val_"):
        return f"val/{key[len('val_') :]}"
    return f"train/{key}"


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers by TensorBoard / W&B tag (the step is the x axis, not a series)."""
    return {
        tensorboard_tag(k): v
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
    }


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings -> {dotted key: bool / number / string}, the values TensorBoard's hparams take."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def samples_markdown(samples: list[tuple[str, str]]) -> str:
    """Sample generations as a Markdown table (TensorBoard's text plugin renders it)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    rows = [f"| {cell(prompt)} | {cell(text)} |" for prompt, text in samples]
    return "\n".join(["| prompt | completion |", "|---|---|", *rows])


class TensorBoardSink:
    """Scalars under `train/*` and `val/*`, the settings as hparams, samples as text."""

    def __init__(self, log_dir: Path, config: dict[str, Any] | None = None):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(log_dir))
        if config:
            metrics = {"val/loss": 0.0, "val/bpb": 0.0}  # links the hparams to these scalar series
            for summary in hparams(flat_hparams(config), metrics):
                self.writer.file_writer.add_summary(summary)

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars_of(record).items():
            self.writer.add_scalar(tag, value, step)

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        self.writer.add_text("samples", samples_markdown(samples), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def open_wandb(cfg: Any, out_dir: Path, run_name: str, config: dict[str, Any] | None):
    """A W&B run in `cfg.mode` (offline or online), files under out_dir/wandb; None without wandb."""
    try:
        import wandb
    except ImportError:
        print(
            f"[lmforge] train.wandb.mode is {cfg.mode} but wandb is not installed "
            "(pip install 'lmforge[track]'); logging to metrics.jsonl only",
            flush=True,
        )
        return None
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity or None,
        name=run_name or None,
        dir=str(out_dir),
        mode=cfg.mode,
        config=config,
    )


class MetricsLogger:
    """metrics.jsonl (one JSON object per line) plus optional TensorBoard and W&B sinks."""

    def __init__(
        self, out_dir: Path, *, tensorboard: bool = False, wandb: Any = None, run_name: str = "", config=None
    ):
        """`wandb` is a `WandbConfig` (lmforge.train.config); None or mode disabled: no W&B."""
        self.path = out_dir / "metrics.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self.tb = TensorBoardSink(out_dir / "tensorboard", config) if tensorboard else None
        self.wandb = None
        if wandb is not None and wandb.mode != "disabled":
            self.wandb = open_wandb(wandb, out_dir, run_name, config)

    def log(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()
        if self.tb is not None:
            self.tb.log(record)
        if self.wandb is not None:
            self.wandb.log(scalars_of(record), step=int(record.get("step", 0)))

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        if self.tb is not None and samples:
            self.tb.log_samples(step, samples)
        if self.wandb is not None and samples:
            import wandb

            table = wandb.Table(columns=["prompt", "completion"], data=[list(s) for s in samples])
            self.wandb.log({"samples": table}, step=step)

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
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
