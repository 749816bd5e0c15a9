"""The `data` recipe section: raw sources -> clean, filtered, deduplicated document shards."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MinHashConfig:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1


@dataclass
class DataConfig:
    inputs: list[str] = field(default_factory=lambda: ["embedded:shakespeare"])
    text_field: str = "text"
    output: str = "data"
    steps: list[str] = field(default_factory=lambda: ["normalize", "exact_dedup"])
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    workers: int = 0  # 0: os.cpu_count()
    tasks: int = 0  # 0: one per input file
