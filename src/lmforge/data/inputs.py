"""Reading documents as text for the tokenizer, tokenize and train-classifier, with a policy for bad records.

The data readers parse the inputs; HTML pages go through the `extract` step (in-process time
limit), so a web crawl reads as its main text here as it does in the data pipeline.

Bad input (`bad_input`): "error" stops at the first unreadable record with a message naming the
file and line; "skip" drops such records and reports them; "replace" decodes a text file that is
not valid UTF-8 with U+FFFD replacement characters and reports how many it put in (other
unreadable records are skipped and reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.documents import Document
from lmforge.data.extract import ExtractConfig, ExtractStep
from lmforge.data.readers import read_inputs
from lmforge.data.rejects import OnReject, Reject, raise_reject

BAD_INPUT = ("error", "skip", "replace")


@dataclass
class InputReport:
    skipped: list[str] = field(default_factory=list)
    replaced: dict[str, int] = field(default_factory=dict)  # file -> replacement characters added

    def summary(self) -> str:
        parts = []
        if self.replaced:
            total = sum(self.replaced.values())
            parts.append(f"decoded {len(self.replaced)} non-UTF-8 files with {total} replacement characters")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} unreadable records (first: {self.skipped[0]})")
        return "; ".join(parts)


def read_text_documents(
    specs: list[str], text_field: str = "text", on_reject: OnReject | None = None
) -> Iterator[Document]:
    """Documents of `specs` with HTML turned into its main text; a page without text is a reject."""
    reject = on_reject or raise_reject
    step = ExtractStep(ExtractConfig(isolation="signal"))
    try:
        for doc in read_inputs(specs, text_field=text_field, on_reject=reject):
            out = step(doc)
            if isinstance(out, str):
                reject(Reject(doc.source, doc.metadata.get("url") or doc.id, out))
                continue
            yield out
    finally:
        step.close()


def read_input_documents(
    specs: list[str], text_field: str = "text", bad_input: str = "error", report: InputReport | None = None
) -> Iterator[Document]:
    """Documents of `specs` via the data readers, handling unreadable records as `bad_input` says."""
    if bad_input not in BAD_INPUT:
        raise ValueError(f"bad_input must be one of {BAD_INPUT}, got {bad_input!r}")
    if bad_input == "error":
        yield from read_text_documents(specs, text_field=text_field)
        return
    report = report if report is not None else InputReport()
    recovered: list[Document] = []

    def on_reject(r: Reject) -> None:
        if bad_input == "replace" and r.position == "file" and r.reason.startswith("invalid UTF-8"):
            data = Path(r.source).read_bytes()
            text = data.decode("utf-8", errors="replace")
            report.replaced[r.source] = text.count("\ufffd") - data.count("\ufffd".encode())
            recovered.append(Document(id=r.source, text=text, source=r.source))
        else:
            report.skipped.append(f"{r.source}: {r.position}: {r.reason}")

    for doc in read_text_documents(specs, text_field=text_field, on_reject=on_reject):
        yield from recovered
        recovered.clear()
        yield doc
    yield from recovered
