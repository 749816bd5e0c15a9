"""The one interface of a per-document data step (datatrove's PipelineStep, filter `keep | drop reason`).

A step is a class whose `name` is its key everywhere: in `data.steps`, in the registry
(`registry.py`), in stats.json, and as the recipe section that holds its settings
(`data.<name>`, a dataclass given to the constructor). Called once per document, it returns
the document to keep it (changed or not) or a short reason string to drop it; the runner counts
drops per reason and keeps examples. `counters` holds extra statistics (lines removed, e-mails
masked) that the runner sums into stats.json; `close` releases what the step holds (a child
process) when its task ends, however it ends.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from lmforge.data.documents import Document


class Step:
    """Base of the per-document steps: `step(doc) -> doc | reason`."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.counters: Counter = Counter()

    def __call__(self, doc: Document) -> Document | str:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the step holds; most steps hold nothing."""
