"""AdamW with decay / no-decay parameter groups, and the learning-rate schedules.

No weight decay on norms, embeddings and biases (every parameter that is not a 2-D weight of a
Linear layer): decaying a gain towards 0 or an embedding row that is rarely seen only hurts.
"""

from __future__ import annotations

import math

import torch

from lmforge.train.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float, params: list | None = None) -> list[dict]:
    """[decay group (Linear weights), no-decay group (norms, embeddings, biases)]; tied weights once."""
    linear_weights = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            linear_weights.add(id(module.weight))
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    allowed = None if params is None else {id(p) for p in params}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen or (allowed is not None and id(p) not in allowed):
            continue
        seen.add(id(p))
        if id(p) in linear_weights and id(p) not in embeddings and p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, params: list | None = None) -> torch.optim.AdamW:
    """AdamW; the fused kernel on CUDA, the foreach one elsewhere."""
    groups = [g for g in param_groups(model, cfg.weight_decay, params) if g["params"]]
    device = groups[0]["params"][0].device
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused, foreach=None if fused else True
    )


def lr_at(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the schedule.

    `progress` in [0, 1] replaces step / max_steps as the clock of the decay (used with
    `train.schedule_by: time`, where it is the elapsed share of max_minutes).

    cosine: from lr down to lr·min_lr_ratio over the remaining steps.
    wsd:    warmup, stable at lr, then a linear decay to lr·min_lr_ratio over the last
            `decay_fraction` of max_steps (warmup-stable-decay).
    constant: lr after warmup.
    """
    total = max(cfg.max_steps, 1)
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if progress is not None:
        step = int(min(max(progress, 0.0), 1.0) * total)
    if cfg.schedule == "cosine":
        span = max(total - cfg.warmup_steps, 1)
        frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))
    decay_start = total - int(round(cfg.decay_fraction * total))
    if step < decay_start:
        return peak
    frac = min((step - decay_start) / max(total - decay_start, 1), 1.0)
    return peak - (peak - floor) * frac
