"""Normalisation: Unicode normal form, stray control characters, whitespace."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from lmforge.data.documents import Document
from lmforge.data.step import Step

# C0 and C1 controls except tab and newline; also DEL, zero-width no-break space (BOM), U+FFFE/FFFF.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")
_TRAILING_SPACE = re.compile(r"[ \t\u00a0\u3000]+$", re.MULTILINE)
_INLINE_SPACE = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]{2,}(?=\S)")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class NormalizeConfig:
    form: str = "NFC"  # Unicode normal form
    strip_control: bool = True  # drop C0/C1 control characters except tab and newline
    whitespace: bool = True  # \r\n -> \n, trailing spaces per line, at most one blank line in a row


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    if cfg.form:
        text = unicodedata.normalize(cfg.form, text)
    if cfg.whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
    if cfg.whitespace:
        text = _TRAILING_SPACE.sub("", text)
        text = _INLINE_SPACE.sub(" ", text)
        text = _BLANK_LINES.sub("\n\n", text)
        text = text.strip("\n ") + "\n" if text.strip() else ""
    return text


class NormalizeStep(Step):
    name = "normalize"
    cfg: NormalizeConfig

    def __call__(self, doc: Document) -> Document | str:
        text = normalize_text(doc.text, self.cfg)
        if not text.strip():
            return "empty"
        doc.text = text
        return doc
