"""The data steps by name. A new per-document step is one `Step` subclass and one entry here
(its settings dataclass, if it has any, is the `data.<name>` section of `DataConfig`)."""

from __future__ import annotations

from lmforge.data.classifiers import ClassifierStep, WordListStep
from lmforge.data.extract import ExtractStep
from lmforge.data.filters import C4, FineWeb, GopherQuality, GopherRepetition
from lmforge.data.langid import LanguageStep
from lmforge.data.normalize import NormalizeStep
from lmforge.data.pii import PIIStep
from lmforge.data.step import Step
from lmforge.data.toxicity import ToxicityStep

# in the order `--help` and error messages list them; a recipe runs them in its own order
DOC_STEPS: dict[str, type[Step]] = {
    step.name: step
    for step in (ExtractStep, NormalizeStep, LanguageStep, GopherQuality, GopherRepetition, C4, FineWeb,
                 WordListStep, ClassifierStep, ToxicityStep, PIIStep)
}
# barriers over every task's output, run by the runner after the per-document steps (dedup.py)
DEDUP_STEPS = ("exact_dedup", "minhash_dedup")
ALL_STEPS = (*DOC_STEPS, *DEDUP_STEPS)
