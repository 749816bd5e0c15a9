"""The `eval` recipe section."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)
    limit: int = 0
    shots: int = 0
