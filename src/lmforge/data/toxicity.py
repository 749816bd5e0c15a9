"""A toxicity filter that works out of the box: alt-profanity-check's shipped classifier, worst passage.

The model is a calibrated linear SVM over TF-IDF features, trained by its authors on offensive
and toxic comments, and its files are part of the `alt-profanity-check` wheel, so nothing is
downloaded at run time. It was chosen over the other packages that ship a model or a list:
`detoxify` downloads its transformer weights on first use, `profanity-check` (the original) has
had no release since 2019 while alt-profanity-check is its maintained, retrained fork, and
`better-profanity` is a word list (what the `wordlist` step already does). docs/data.md
("Toxicity") has the comparison and the measured precision and recall.

A document is scored by its worst passage. Its lines, and long lines cut at sentence ends, are
the units; each unit gets the classifier's probability; a passage is `window` consecutive units
and scores their mean; the document's score is the highest passage score. One rude word in a
long text moves a passage by a fraction; a run of abuse, or a short abusive comment, scores high.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.data.documents import Document
from lmforge.data.step import Step
from lmforge.errors import LmforgeError

EXTRA = "toxicity"  # the pyproject extra that installs the classifier
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
LONG_LINE_CHARS = 200  # a line longer than this is cut into its sentences


@dataclass
class ToxicityConfig:
    threshold: float = 0.9  # drop a document whose worst passage scores above this
    window: int = 5  # units (lines, or sentences of long lines) per passage


def scoring_units(text: str) -> list[str]:
    """The units a document is scored by: non-empty lines, with long lines cut into sentences."""
    units: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        units.extend(_SENTENCE_END.split(line) if len(line) > LONG_LINE_CHARS else [line])
    return units


def worst_passage(unit_scores: np.ndarray, window: int) -> float:
    """The highest mean over `window` consecutive unit scores (all of them when there are fewer)."""
    if unit_scores.size == 0:
        return 0.0
    if unit_scores.size <= window:
        return float(unit_scores.mean())
    sums = np.concatenate(([0.0], np.cumsum(unit_scores)))
    return float((sums[window:] - sums[:-window]).max() / window)


def load_classifier() -> Any:
    """alt-profanity-check's `predict_prob(texts) -> probabilities`, or a clear error naming the extra."""
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise LmforgeError(
            f"step 'toxicity' needs the alt-profanity-check classifier: pip install 'lmforge[{EXTRA}]' "
            "(or pip install alt-profanity-check)"
        ) from None
    return predict_prob


class ToxicityStep(Step):
    """Drop documents whose worst passage scores above `threshold`; sets `metadata.toxicity_score`."""

    name = "toxicity"
    cfg: ToxicityConfig

    def __init__(self, cfg: ToxicityConfig):
        if cfg.window < 1:
            raise LmforgeError(f"data.toxicity.window must be >= 1, got {cfg.window}")
        if not 0.0 <= cfg.threshold <= 1.0:
            raise LmforgeError(f"data.toxicity.threshold must be in [0, 1], got {cfg.threshold}")
        super().__init__(cfg)
        self.predict_prob = load_classifier()

    def score(self, text: str) -> float:
        units = scoring_units(text)
        scores = self.predict_prob(units) if units else np.empty(0)
        return worst_passage(np.asarray(scores, dtype=np.float64), self.cfg.window)

    def __call__(self, doc: Document) -> Document | str:
        score = self.score(doc.text)
        doc.metadata["toxicity_score"] = round(score, 4)
        return "toxic" if score > self.cfg.threshold else doc
