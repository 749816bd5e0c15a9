"""HTML -> main text through trafilatura, with a per-document timeout.

trafilatura has no in-process timeout (trafilatura issue #704), so each call runs under a
real-time interval timer (SIGALRM) that raises inside the extraction and abandons the page.
The timer works in a process's main thread (every pipeline worker runs its task there); in
another thread extraction runs without a timeout.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from lmforge.data.documents import Document

HTML_FLAG = "html"


class ExtractionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ExtractionTimeout in this (main) thread after `seconds`; no-op elsewhere or when <= 0."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise ExtractionTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def extract_text(html: str, url: str | None = None, timeout: float = 1.0, favor_precision: bool = True) -> tuple[str, str]:
    """(main text, "") on success, ("", reason) when nothing is extracted, it times out, or it fails."""
    import trafilatura

    try:
        with time_limit(timeout):
            text = trafilatura.extract(
                html,
                url=url or None,
                favor_precision=favor_precision,
                include_comments=False,
                include_tables=True,
                deduplicate=False,
            )
    except ExtractionTimeout:
        return "", "extract_timeout"
    except Exception as e:  # trafilatura/lxml raise many types on broken pages
        return "", f"extract_error_{type(e).__name__}"
    if not text or not text.strip():
        return "", "extract_empty"
    return text, ""


class ExtractStep:
    """Pipeline step: documents flagged as HTML become their main text; others pass through."""

    name = "extract"

    def __init__(self, timeout: float = 1.0, favor_precision: bool = True):
        self.timeout = timeout
        self.favor_precision = favor_precision

    def __call__(self, doc: Document) -> Document | str:
        if not doc.metadata.get(HTML_FLAG):
            return doc
        text, reason = extract_text(doc.text, doc.metadata.get("url"), self.timeout, self.favor_precision)
        if reason:
            return reason
        doc.text = text
        del doc.metadata[HTML_FLAG]
        return doc


def extract_documents(
    docs: Iterator[Document],
    on_reject: Callable | None = None,
    timeout: float = 1.0,
) -> Iterator[Document]:
    """Extract HTML documents of a reader stream; a page yielding no text goes to `on_reject`."""
    from lmforge.data.readers import Reject

    step = ExtractStep(timeout=timeout)
    for doc in docs:
        out = step(doc)
        if isinstance(out, str):
            if on_reject is not None:
                on_reject(Reject(doc.source, doc.metadata.get("url") or doc.id, out))
            continue
        yield out
