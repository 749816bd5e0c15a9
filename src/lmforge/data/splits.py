"""Byte-range units: a large uncompressed JSONL file is read by many tasks, one line range each.

A task's unit is normally a whole input (`readers.expand_inputs`). An uncompressed JSONL file
over `data.task_bytes` bytes becomes `ByteRange` units of about that size instead, each starting
right after a newline, so that no line is cut and every line belongs to exactly one range.
Planning reads each such file once, counting newlines, so that every range knows the number of
its first line: a range yields the same documents, ids and reject positions as the whole file
does for those lines, and the concatenated output is the output of one task over the file.
Compressed files (.gz, .zst) cannot be entered in the middle and stay one task each; a text
file is one document, so it stays one unit too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

from lmforge.data.documents import Document
from lmforge.data.readers import read_jsonl_range, read_unit
from lmforge.data.rejects import OnReject

SPLITTABLE_SUFFIXES = (".jsonl", ".ndjson")
_READ = 1 << 20


class ByteRange(NamedTuple):
    """Lines of `path` in bytes [start, end); the first is line number `first_line`."""

    path: str
    start: int
    end: int
    first_line: int


Unit = str | ByteRange


def split_units(units: list[str], task_bytes: int) -> list[Unit]:
    """`units` with every splittable file over `task_bytes` bytes replaced by its byte ranges, in order."""
    out: list[Unit] = []
    for unit in units:
        splittable = unit.lower().endswith(SPLITTABLE_SUFFIXES) and os.path.isfile(unit)
        if task_bytes > 0 and splittable and os.path.getsize(unit) > task_bytes:
            out.extend(byte_ranges(unit, task_bytes))
        else:
            out.append(unit)
    return out


def byte_ranges(path: str, task_bytes: int) -> list[ByteRange]:
    """Ranges of about `task_bytes` bytes, each ending just after a newline (the last at the end of file)."""
    size = os.path.getsize(path)
    ranges: list[ByteRange] = []
    start, line = 0, 1
    with open(path, "rb") as f:
        while start < size:
            end = _line_end(f, min(start + task_bytes, size), size)
            ranges.append(ByteRange(path, start, end, line))
            line += _count_newlines(f, start, end)
            start = end
    return ranges


def _line_end(f, pos: int, size: int) -> int:
    """The offset just past the first newline at or after `pos - 1` (the end of file if there is none)."""
    if pos >= size:
        return size
    f.seek(pos - 1)
    while chunk := f.read(_READ):
        nl = chunk.find(b"\n")
        if nl >= 0:
            return f.tell() - len(chunk) + nl + 1
    return size


def _count_newlines(f, start: int, end: int) -> int:
    f.seek(start)
    count, left = 0, end - start
    while left > 0 and (chunk := f.read(min(left, _READ))):
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def read_task_unit(unit: Unit, text_field: str, on_reject: OnReject, max_bytes: int) -> Iterator[Document]:
    """Documents of one unit of a task: a whole input, or a byte range of one."""
    if isinstance(unit, ByteRange):
        return read_jsonl_range(unit.path, unit.start, unit.end, unit.first_line, text_field=text_field,
                                on_reject=on_reject, max_bytes=max_bytes)
    return read_unit(unit, text_field=text_field, on_reject=on_reject, max_bytes=max_bytes)
