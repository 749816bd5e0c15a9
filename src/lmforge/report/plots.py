"""One plot per series of a stage's metrics.jsonl, as PNG bytes (matplotlib, Agg).

Known series get a title and unit and sit in a fixed order: loss (with val loss), val bpb, the
objective's own (DPO rewards, margins and accuracy, RL reward, ...), then lr, grad norm, tokens/s,
MFU and memory; any other numeric series gets a plot under its own name, before lr. Long noisy
series are drawn raw (faint) with an exponential moving average on top; short ones as points.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

NOT_SERIES = {"step", "elapsed_s", "step_s"}  # the x axis and its by-products
PAIRS = {"rewards/chosen": "rewards/rejected", "logps/chosen": "logps/rejected"}  # drawn together
TITLES = {  # key: (title, y label)
    "loss": ("loss", "nats per token"),
    "val_bpb": ("validation bits per byte", "bits per byte"),
    "rewards/chosen": ("DPO implicit rewards", "β·Δ log-prob"),
    "rewards/margins": ("DPO reward margin", "chosen - rejected"),
    "rewards/accuracies": ("DPO reward accuracy (chosen > rejected)", "fraction of pairs"),
    "logps/chosen": ("DPO log-probabilities", "log-prob (sum)"),
    "nll_loss": ("DPO NLL term on chosen", "nats per token"),
    "reward": ("RL reward (group mean)", "reward"),
    "reward_std": ("RL reward std within a group", "std"),
    "frac_reward_zero_std": ("RL groups with equal rewards", "fraction"),
    "completion_length": ("RL completion length", "tokens"),
    "clip_ratio": ("RL clipped ratio", "fraction of tokens"),
    "kl": ("RL KL to the reference (k3)", "nats per token"),
    "accuracy": ("reward model pair accuracy", "fraction of pairs"),
    "margin": ("reward model margin", "chosen - rejected"),
    "reward/mean": ("reward model mean score", "score"),
    "lr": ("learning rate", "lr"),
    "grad_norm": ("gradient norm (before clipping)", "L2 norm"),
    "tokens_per_s": ("throughput", "tokens/s"),
    "mfu": ("model FLOPs utilization", "MFU %"),
    "mem_gb": ("peak memory", "GB"),
}


def rank(key: str) -> float:
    """TITLES order; an unknown series goes after the objectives' known ones, before the trainer's (lr...)."""
    order = list(TITLES)
    return order.index(key) if key in order else order.index("lr") - 0.5


UNSMOOTHED = {"lr", "mem_gb", "val_bpb", "val_loss"}  # exact or once per evaluation: drawn as they are
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass
class Panel:
    title: str
    ylabel: str
    series: list[tuple[str, list[float], list[float]]]  # (label, steps, values)


def _series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [
        (float(m["step"]), float(m[key]))
        for m in metrics
        if isinstance(m.get("step"), (int, float))
        and isinstance(m.get(key), (int, float))
        and not isinstance(m[key], bool)
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def panels(metrics: list[dict]) -> list[Panel]:
    """The plots of one stage's metrics, in the report's order."""
    keys: list[str] = []
    for m in metrics:
        for k, v in m.items():
            if (
                k not in keys
                and k not in NOT_SERIES
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ):
                keys.append(k)
    keys.sort(key=rank)
    partners = {"loss": "val_loss", **PAIRS}
    out = []
    for key in keys:
        if key in partners.values() and any(k in keys for k, v in partners.items() if v == key):
            continue  # drawn with its partner
        title, ylabel = TITLES.get(key, (key, key))
        series = [(key, *_series(metrics, key))]
        if partners.get(key) in keys:
            series.append((partners[key], *_series(metrics, partners[key])))
        out.append(Panel(title, ylabel, series))
    return out


def ema(values: list[float], window: float) -> list[float]:
    """Exponential moving average with TensorBoard's start-up debiasing."""
    beta, acc, out = 1 - 1 / window, 0.0, []
    for i, v in enumerate(values, 1):
        acc = beta * acc + (1 - beta) * v
        out.append(acc / (1 - beta**i))
    return out


def panel_png(panel: Panel, stage: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg by default
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.4, 2.8), dpi=100)
    ax = fig.subplots()
    alone = len(panel.series) == 1
    legend = not alone
    for (label, xs, ys), color in zip(panel.series, COLORS):
        window = len(xs) / 30
        if len(xs) <= 40:  # few points: each one shows
            ax.plot(xs, ys, "o-", color=color, label=label, markersize=3.5, linewidth=1)
            if len(xs) == 1:  # one evaluation: its value, written out
                ax.annotate(f"{ys[0]:.4g}", (xs[0], ys[0]), textcoords="offset points", xytext=(6, 6))
        elif label in UNSMOOTHED or window <= 1.5:
            ax.plot(xs, ys, color=color, label=label, linewidth=1.2)
        else:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8, label="each step" if alone else None)
            smoothed = f"moving average (~{window:.0f} steps)"
            ax.plot(xs, ema(ys, window), color=color, linewidth=1.6, label=smoothed if alone else label)
            legend = True
    ax.set_title(f"{stage}: {panel.title}", fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    steps = sorted({x for _, xs, _ in panel.series for x in xs})
    if len(steps) == 1:
        ax.set_xticks(steps)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
