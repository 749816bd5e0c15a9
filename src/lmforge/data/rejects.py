"""Records that could not become documents: where they were, why, and how they are counted.

Readers and the runner hand every unreadable or unwritable record to an `OnReject` callback;
the pipeline stores them under rejects/ and counts them by kind in stats.json. Without a
callback a reject raises `LmforgeError` naming the file and position.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError


@dataclass
class Reject:
    """A record the reader could not turn into a document."""

    source: str
    position: str  # "line 12", "offset 3456", "row 7", "file", or a document id
    reason: str
    excerpt: str = ""

    def to_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "position": self.position,
            "reason": self.reason,
            "excerpt": self.excerpt,
        }


OnReject = Callable[[Reject], None]


def raise_reject(r: Reject) -> None:
    raise LmforgeError(f"{r.source}: {r.position}: {r.reason}")


def reject_reason_kind(reason: str) -> str:
    """A short key for counting rejects: 'malformed JSON (...)' -> 'malformed_json'."""
    head = reason.split("(")[0].split(":")[0].strip().lower()
    return "_".join(head.split()) or "unknown"


def printable_path(path: str) -> str:
    """A file name as valid UTF-8: bytes that are not UTF-8 are written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
