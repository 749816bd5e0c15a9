"""HTML -> main text through trafilatura or resiliparse, with a per-document timeout.

Two backends (`extract.backend`): trafilatura (default; `favor_precision`) and resiliparse's
main-content heuristics over its lexbor DOM, the fast path (several times trafilatura's pages/s,
benchmarks/extract.py; `pip install 'lmforge[resiliparse]'`). Block elements become paragraphs
and `<br>` a line break, so verse keeps its lines.

Neither has an in-process timeout (trafilatura issue #704). Two ways to bound a page:

- ``isolation: process`` (default, as datatrove's ExtractorSandbox): extraction runs in a child
  process fed through a pipe; a page that takes longer than the timeout gets the child killed
  and restarted, so even a page stuck inside C code (lxml, regex) cannot stall the worker, and
  a crash of the child only loses that page (reason ``extract_crashed``).
- ``isolation: signal``: a real-time interval timer (SIGALRM) raises inside the extraction. No
  extra process, but it only interrupts Python code, and only in a process's main thread.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lmforge.data.documents import HTML_FLAG, Document
from lmforge.data.lifeline import exit_with_parent
from lmforge.data.step import Step
from lmforge.errors import LmforgeError

BACKENDS = ("trafilatura", "resiliparse")


@dataclass
class ExtractConfig:
    backend: str = "trafilatura"  # trafilatura | resiliparse (faster; the `resiliparse` extra)
    timeout: float = 1.0  # seconds per page; 0 disables the limit
    favor_precision: bool = True  # trafilatura only
    isolation: str = "process"  # process: a killable child per worker (robust); signal: SIGALRM in-process


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


def _trafilatura(html: str, url: str | None, favor_precision: bool) -> str | None:
    import trafilatura

    return trafilatura.extract(
        html,
        url=url or None,
        favor_precision=favor_precision,
        include_comments=False,
        include_tables=True,
        deduplicate=False,
    )


def _resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(
        html,
        preserve_formatting=True,
        main_content=True,
        list_bullets=True,
        alt_texts=False,
        links=False,
        form_fields=False,
        noscript=False,
    )


def check_backend(backend: str) -> None:
    """Refuse an unknown backend, or resiliparse when it is not installed, before any page is read."""
    if backend not in BACKENDS:
        raise LmforgeError(f"data.extract.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "resiliparse":
        try:
            import resiliparse.extract.html2text  # noqa: F401
        except ImportError:
            raise LmforgeError(
                "data.extract.backend resiliparse needs the resiliparse package: "
                "pip install 'lmforge[resiliparse]' (or pip install resiliparse)"
            ) from None


def _extract(html: str, url: str | None, backend: str, favor_precision: bool) -> tuple[str, str]:
    """(main text, "") or ("", reason) with the chosen backend."""
    try:
        text = _resiliparse(html) if backend == "resiliparse" else _trafilatura(html, url, favor_precision)
    except ExtractionTimeout:
        raise
    except Exception as e:  # the parsers raise many types on broken pages
        return "", f"extract_error_{type(e).__name__}"
    if not text or not text.strip():
        return "", "extract_empty"
    return text, ""


def extract_text(
    html: str,
    url: str | None = None,
    timeout: float = 1.0,
    favor_precision: bool = True,
    backend: str = "trafilatura",
) -> tuple[str, str]:
    """In-process extraction under a SIGALRM time limit: (text, "") or ("", reason)."""
    try:
        with time_limit(timeout):
            return _extract(html, url, backend, favor_precision)
    except ExtractionTimeout:
        return "", "extract_timeout"


def _serve(conn: Any, backend: str, favor_precision: bool) -> None:
    """The sandbox child: extract pages from the pipe until it closes or the worker is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    exit_with_parent()  # a page stuck in C code would otherwise outlive a killed worker
    while True:
        try:
            html, url = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_extract(html, url, backend, favor_precision))


class ExtractorSandbox:
    """A child process that extracts one page at a time; killed and restarted on timeout or crash."""

    def __init__(self, timeout: float = 1.0, favor_precision: bool = True, backend: str = "trafilatura"):
        self.timeout = timeout
        self.favor_precision = favor_precision
        self.backend = backend
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.backend, self.favor_precision), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None

    def extract(self, html: str, url: str | None = None) -> tuple[str, str]:
        if self._proc is None or not self._proc.is_alive():
            self._kill()
            self._start()
        try:
            self._conn.send((html, url))
            if self.timeout > 0 and not self._conn.poll(self.timeout):
                self._kill()
                return "", "extract_timeout"
            return self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._kill()
            return "", "extract_crashed"

    def close(self) -> None:
        if self._proc is not None:
            self._conn.close()  # the child sees EOF and exits
            self._proc.join(timeout=2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = self._conn = None


class ExtractStep(Step):
    """Documents flagged as HTML become their main text; others pass through."""

    name = "extract"
    cfg: ExtractConfig

    def __init__(self, cfg: ExtractConfig):
        if cfg.isolation not in ("process", "signal"):
            raise LmforgeError(f"data.extract.isolation must be 'process' or 'signal', got {cfg.isolation!r}")
        check_backend(cfg.backend)
        super().__init__(cfg)
        isolated = cfg.isolation == "process"
        self.sandbox = ExtractorSandbox(cfg.timeout, cfg.favor_precision, cfg.backend) if isolated else None

    def __call__(self, doc: Document) -> Document | str:
        if not doc.metadata.get(HTML_FLAG):
            return doc
        url = doc.metadata.get("url")
        if self.sandbox is not None:
            text, reason = self.sandbox.extract(doc.text, url)
        else:
            text, reason = extract_text(
                doc.text, url, self.cfg.timeout, self.cfg.favor_precision, self.cfg.backend
            )
        if reason:
            return reason
        doc.text = text
        del doc.metadata[HTML_FLAG]
        return doc

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
