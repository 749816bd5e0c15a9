"""Scorers usable as filter steps: a word-list filter and a trainable hashed n-gram classifier.

The classifier is logistic regression over hashed word uni- and bigrams (feature hashing into
2^dim_bits buckets, L2-normalised counts), trained with full-batch Adam in numpy on the user's
own positive and negative documents (`lmforge data train-classifier`). Nothing is downloaded.
The model file is an .npz holding the weights and the featuriser settings.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from lmforge.data.documents import Document
from lmforge.data.filters import split_words
from lmforge.data.step import Step
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_bytes

BUILTIN_WORDLIST = Path(__file__).parent / "assets" / "badwords_en.txt"
_MIX = np.uint64(0x9E3779B97F4A7C15)


# ---------------------------------------------------------------------------- word list


@dataclass
class WordListConfig:
    path: str = ""  # one word or phrase a line; empty: the small built-in English list
    max_fraction: float = 0.0  # drop when (matched words / words) exceeds this


def load_wordlist(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LmforgeError(f"word list {path}: cannot read ({e})") from None
    words = [w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#")]
    if not words:
        raise LmforgeError(f"word list {path}: no words in it")
    return words


class WordListStep(Step):
    """Drop documents where listed words make up more than `max_fraction` of the words."""

    name = "wordlist"
    cfg: WordListConfig

    def __init__(self, cfg: WordListConfig):
        super().__init__(cfg)
        words = load_wordlist(cfg.path or BUILTIN_WORDLIST)
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")

    def __call__(self, doc: Document) -> Document | str:
        hits = len(self.pattern.findall(doc.text.lower()))
        if hits == 0:
            return doc
        n_words = max(1, len(doc.text.split()))
        return "listed_words" if hits / n_words > self.cfg.max_fraction else doc


# ---------------------------------------------------------------------------- hashed n-gram features


@dataclass
class Featurizer:
    dim_bits: int = 18
    ngrams: int = 2

    def rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR-like (row index, column, value) triplets of the L2-normalised hashed n-gram counts."""
        rows, cols, vals = [], [], []
        mask = np.uint64((1 << self.dim_bits) - 1)
        for r, text in enumerate(texts):
            words = [w.lower() for w in split_words(text)]
            if not words:
                continue
            h = np.fromiter(
                (xxhash.xxh3_64_intdigest(w.encode("utf-8")) for w in words),
                dtype=np.uint64,
                count=len(words),
            )
            feats = [h]
            with np.errstate(over="ignore"):
                for n in range(2, self.ngrams + 1):
                    g = h[: h.size - n + 1].copy()
                    for k in range(1, n):
                        g = g * _MIX + h[k : k + g.size]
                    feats.append(g)
            idx = (np.concatenate(feats) & mask).astype(np.int64)
            uniq, counts = np.unique(idx, return_counts=True)
            v = counts.astype(np.float64)
            v /= np.linalg.norm(v)
            rows.append(np.full(uniq.size, r, dtype=np.int64))
            cols.append(uniq)
            vals.append(v)
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


class HashedNgramClassifier:
    """Logistic regression on hashed n-grams. `predict_proba(texts)` -> P(positive)."""

    def __init__(self, featurizer: Featurizer, weights: np.ndarray | None = None, bias: float = 0.0):
        self.featurizer = featurizer
        self.weights = weights if weights is not None else np.zeros(1 << featurizer.dim_bits)
        self.bias = bias

    def _scores(self, texts: list[str]) -> np.ndarray:
        r, c, v = self.featurizer.rows(texts)
        return np.bincount(r, weights=v * self.weights[c], minlength=len(texts)) + self.bias

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self._scores(texts)))

    @classmethod
    def train(
        cls,
        texts: list[str],
        labels: list[int],
        featurizer: Featurizer | None = None,
        epochs: int = 200,
        lr: float = 0.05,
        l2: float = 1e-4,
    ) -> HashedNgramClassifier:
        """Full-batch Adam on the mean log loss plus an L2 penalty; deterministic."""
        feat = featurizer or Featurizer()
        y = np.asarray(labels, dtype=np.float64)
        if y.size == 0 or len(set(labels)) != 2:
            raise LmforgeError("train-classifier needs both positive and negative examples")
        r, c, v = feat.rows(texts)
        dim = 1 << feat.dim_bits
        w, b = np.zeros(dim), 0.0
        m, s = np.zeros(dim), np.zeros(dim)
        mb = sb = 0.0
        b1, b2, eps = 0.9, 0.999, 1e-8
        for t in range(1, epochs + 1):
            z = np.bincount(r, weights=v * w[c], minlength=y.size) + b
            p = 1.0 / (1.0 + np.exp(-z))
            err = (p - y) / y.size
            gw = np.bincount(c, weights=v * err[r], minlength=dim) + l2 * w
            gb = float(err.sum())
            m = b1 * m + (1 - b1) * gw
            s = b2 * s + (1 - b2) * gw * gw
            w -= lr * (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + eps)
            mb = b1 * mb + (1 - b1) * gb
            sb = b2 * sb + (1 - b2) * gb * gb
            b -= lr * (mb / (1 - b1**t)) / (np.sqrt(sb / (1 - b2**t)) + eps)
        return cls(feat, w, b)

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        meta = json.dumps(
            {
                "dim_bits": self.featurizer.dim_bits,
                "ngrams": self.featurizer.ngrams,
                "bias": self.bias,
                "format": "lmforge-hashed-ngram-lr-v1",
            }
        )
        np.savez_compressed(buf, weights=self.weights.astype(np.float32), meta=np.array(meta))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> HashedNgramClassifier:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                weights = z["weights"].astype(np.float64)
        except (OSError, KeyError, ValueError) as e:
            raise LmforgeError(
                f"classifier {path}: not a model from `lmforge data train-classifier` ({e})"
            ) from None
        feat = Featurizer(dim_bits=int(meta["dim_bits"]), ngrams=int(meta["ngrams"]))
        return cls(feat, weights, float(meta["bias"]))


@dataclass
class ClassifierConfig:
    path: str = ""  # a model file from `lmforge data train-classifier`
    threshold: float = 0.5  # keep documents whose positive-class probability is >= threshold


class ClassifierStep(Step):
    """Keep documents whose positive-class probability is at least the threshold."""

    name = "classifier"
    cfg: ClassifierConfig

    def __init__(self, cfg: ClassifierConfig):
        super().__init__(cfg)
        self.model = HashedNgramClassifier.load(cfg.path)

    def __call__(self, doc: Document) -> Document | str:
        p = float(self.model.predict_proba([doc.text])[0])
        doc.metadata["classifier_score"] = round(p, 4)
        return doc if p >= self.cfg.threshold else "below_threshold"
