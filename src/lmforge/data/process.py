"""Per-document processing, shared by the runner's tasks and the dry-run preview: read a task's
units, run the recipe's steps over each document, count what every step kept and dropped."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from lmforge.data.config import DataConfig
from lmforge.data.documents import HTML_FLAG, Document
from lmforge.data.registry import DOC_STEPS
from lmforge.data.rejects import OnReject, Reject
from lmforge.data.splits import Unit, read_task_unit
from lmforge.data.stats import EXCERPT_CHARS, StatsRecorder
from lmforge.data.step import Step


def build_steps(cfg: DataConfig) -> list[Step]:
    """The per-document steps of the recipe, in order, each built from its `data.<name>` section."""
    return [DOC_STEPS[name](getattr(cfg, name)) for name in cfg.steps if name in DOC_STEPS]


@contextlib.contextmanager
def close_steps(steps: list[Step]) -> Iterator[None]:
    """Release what steps hold (the extraction sandbox process) when the task ends, however it ends."""
    try:
        yield
    finally:
        for step in steps:
            step.close()


def max_record_bytes(cfg: DataConfig) -> int:
    """Records over this many bytes cannot hold a document within max_doc_chars: skip them unread."""
    return 4 * cfg.max_doc_chars + (1 << 20)


def read_units(units: list[Unit], cfg: DataConfig, on_reject: OnReject) -> Iterator[Document]:
    for unit in units:
        yield from read_task_unit(unit, cfg.text_field, on_reject, max_record_bytes(cfg))


def process_documents(
    docs: Iterable[Document],
    steps: list[Step],
    stats: StatsRecorder,
    max_doc_chars: int,
    on_reject: OnReject,
) -> Iterator[Document]:
    """Run the per-document steps; yields kept documents and records everything in `stats`."""
    extracts = any(step.name == "extract" for step in steps)
    for doc in docs:
        n = len(doc.text)
        stats.input["documents"] += 1
        stats.input["characters"] += n
        if n > max_doc_chars:
            on_reject(
                Reject(
                    doc.source,
                    doc.id,
                    f"too_long: {n} characters > data.max_doc_chars {max_doc_chars}",
                    doc.text[:EXCERPT_CHARS],
                )
            )
            continue
        if not extracts and doc.metadata.get(HTML_FLAG):
            on_reject(
                Reject(
                    doc.source,
                    doc.id,
                    "html_without_extract: add `extract` to data.steps for HTML/WARC input",
                )
            )
            continue
        for step in steps:
            s = stats.steps[step.name]
            s["in_docs"] += 1
            s["in_chars"] += len(doc.text)
            before = doc.text
            out = step(doc)
            if isinstance(out, str):
                stats.dropped(step.name, out, doc, len(before))
                break
            doc = out
            s["out_docs"] += 1
            s["out_chars"] += len(doc.text)
            if doc.text is not before and doc.text != before:
                s["modified"] += 1
        else:
            yield doc
    for step in steps:
        c = stats.steps[step.name]["counters"]
        for k, v in step.counters.items():
            c[k] = c.get(k, 0) + v
