"""Helpers of the bounded-memory tests: a corpus larger than the plays, and peak RSS in a fresh process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.embedded import embedded_documents

# Run as `python -c PRELUDE + body` (Linux): `start = reset_peak()` resets this process's peak RSS
# (VmHWM) to its current RSS and returns that; `rss_growth(start)` is how far the peak of this
# process, or of any child it waited for, has since risen above `start`, in bytes. Not ru_maxrss
# for this process: it cannot be reset, and after vfork + exec it holds the parent's peak.
PRELUDE = """
import json, resource, sys

def _status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")

def rss_growth(start):
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # forked after start
    return max(_status("VmHWM"), children) - start
"""


def play_lines() -> list[str]:
    return [line for _, text in embedded_documents("shakespeare") for line in text.splitlines()]


def sampled_documents(lines: list[str], n_chars: int, doc_chars: int, seed: int = 0) -> Iterator[str]:
    """About `n_chars` in documents of about `doc_chars`, of `lines` drawn at random, made lazily:
    a corpus larger than the plays with few distinct chunks and no repeated documents."""
    rng = random.Random(seed)
    for _ in range(max(1, n_chars // doc_chars)):
        doc: list[str] = []
        size = 0
        while size < doc_chars:
            doc.append(rng.choice(lines))
            size += len(doc[-1]) + 1
        yield "\n".join(doc)


def measured(body: str, *args: str) -> dict:
    """Run PRELUDE + `body` in a fresh interpreter with `args` (this folder importable); its last
    line of output, parsed."""
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
