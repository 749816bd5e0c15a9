"""The loss-spike / NaN guard: a bad step is skipped, repeated bad steps roll training back.

A step is bad when its loss or gradient norm is not finite, or when its loss exceeds
`spike_factor` x the running mean of recent good losses (an exponential moving average, armed
after `warmup` good steps so the steep start of training is not mistaken for spikes). The
trainer never applies a bad step's update; after `max_bad_steps` bad steps in a row it reloads
the last checkpoint and halves the learning rate (`lr_scale`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class LossGuard:
    spike_factor: float = 5.0
    max_bad_steps: int = 3
    warmup: int = 10
    beta: float = 0.9
    mean: float = 0.0
    good_steps: int = 0
    consecutive_bad: int = 0
    lr_scale: float = 1.0
    rollbacks: int = 0

    def check(self, loss: float, grad_norm: float) -> str | None:
        """None for a good step (and update the running mean), else the reason it is bad."""
        reason = None
        if not math.isfinite(loss):
            reason = "non-finite loss"
        elif not math.isfinite(grad_norm):
            reason = "non-finite gradient norm"
        elif (
            self.spike_factor > 0 and self.good_steps >= self.warmup and loss > self.spike_factor * self.mean
        ):
            reason = f"loss spike ({loss:.3f} > {self.spike_factor:g} x running mean {self.mean:.3f})"
        if reason:
            self.consecutive_bad += 1
            return reason
        self.consecutive_bad = 0
        self.mean = loss if self.good_steps == 0 else self.beta * self.mean + (1 - self.beta) * loss
        self.good_steps += 1
        return None

    @property
    def needs_rollback(self) -> bool:
        return self.max_bad_steps > 0 and self.consecutive_bad >= self.max_bad_steps

    def rolled_back(self) -> None:
        self.consecutive_bad = 0
        self.lr_scale *= 0.5
        self.rollbacks += 1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            if hasattr(self, k):
                setattr(self, k, v)
