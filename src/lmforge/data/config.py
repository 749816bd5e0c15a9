"""The `data` recipe section: raw sources -> clean, filtered, deduplicated document shards.

Each step's settings are a dataclass beside the step (`data.<step name>`); this section holds
one of each. Thresholds default to the published values (datatrove's Gopher, C4 and FineWeb
filters; see docs/data.md). Every rule can be switched off by listing its name in its
section's `disable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.data.classifiers import ClassifierConfig, WordListConfig
from lmforge.data.dedup import ExactDedupConfig
from lmforge.data.executors import RayConfig
from lmforge.data.extract import ExtractConfig
from lmforge.data.filters import C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig
from lmforge.data.langid import LanguageConfig
from lmforge.data.minhash import MinHashConfig
from lmforge.data.normalize import NormalizeConfig
from lmforge.data.pii import PIIConfig
from lmforge.data.registry import ALL_STEPS, DEDUP_STEPS
from lmforge.data.toxicity import ToxicityConfig


@dataclass
class DataConfig:
    # files, globs, directories, embedded:shakespeare or hf:DATASET
    inputs: list[str] = field(default_factory=lambda: ["embedded:shakespeare"])
    text_field: str = "text"  # the text key of JSONL / Parquet records
    output: str = "data"  # relative to the run directory
    # the pipeline steps, in order (lmforge data --help lists them)
    steps: list[str] = field(default_factory=lambda: ["normalize", "exact_dedup"])
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    workers: int = 0  # 0: os.cpu_count()
    tasks: int = 0  # 0: one per input file
    executor: str = "local"  # local | ray
    max_doc_chars: int = 10_000_000  # longer documents are rejected (reason too_long), never half-read
    examples_per_rule: int = 3  # removed examples kept per filter rule for summary.md
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)
    wordlist: WordListConfig = field(default_factory=WordListConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    toxicity: ToxicityConfig = field(default_factory=ToxicityConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # an uncompressed JSONL file over this many bytes is read as byte ranges of about this size, one task
    # each (0: one task per file)
    task_bytes: int = 1 << 30

    def validate(self) -> None:
        seen_dedup = False
        for step in self.steps:
            if step not in ALL_STEPS:
                import difflib

                close = difflib.get_close_matches(step, ALL_STEPS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown step {step!r}{hint} (steps: {', '.join(ALL_STEPS)})")
            if step in DEDUP_STEPS:
                seen_dedup = True
            elif seen_dedup:
                raise ValueError(
                    f"step {step!r} comes after a dedup step; dedup steps are barriers and must come last"
                )
        if len(set(self.steps)) != len(self.steps):
            raise ValueError("steps: each step may appear once")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {self.executor!r}")
        if self.minhash.bands < 1 or self.minhash.rows < 1 or self.minhash.ngram < 1:
            raise ValueError("minhash.ngram, minhash.bands and minhash.rows must be >= 1")
        if self.minhash.bucket_shards < 1:
            raise ValueError("minhash.bucket_shards must be >= 1")
        if self.task_bytes < 0 or self.ray.max_retries < 0 or self.ray.num_cpus <= 0 or self.ray.memory < 0:
            raise ValueError("task_bytes, ray.max_retries and ray.memory must be >= 0, ray.num_cpus > 0")
        if "classifier" in self.steps and not self.classifier.path:
            raise ValueError(
                "step 'classifier' needs classifier.path (train one with `lmforge data train-classifier`)"
            )
