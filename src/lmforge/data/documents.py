"""The Document record and its on-disk form: jsonl.zst shards of {"id", "text", "source", "metadata"}.

Shards are written atomically (temp name, fsync, rename), so a reader never sees a torn shard.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write

HTML_FLAG = "html"  # metadata key set on documents whose text is still HTML (the extract step clears it)


@dataclass
class Document:
    """One document: a stable id, its text, where it came from, and free-form metadata."""

    id: str
    text: str
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "source": self.source, "metadata": self.metadata}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Document:
        return cls(
            id=str(record["id"]),
            text=record["text"],
            source=str(record.get("source", "")),
            metadata=dict(record.get("metadata") or {}),
        )


def encode_record(record: dict[str, Any]) -> bytes:
    """One JSONL line (UTF-8, keys in a fixed order, no ASCII escaping, trailing newline).

    Standard JSON only: NaN or an infinity raises ValueError, a lone surrogate UnicodeEncodeError
    (the readers reject such records, so a shard never holds them).
    """
    line = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (line + "\n").encode("utf-8")


class ShardWriter:
    """Stream records into a jsonl.zst file that appears (atomically) only when closed cleanly."""

    def __init__(self, path: str | os.PathLike, level: int = 3):
        self.path = Path(path)
        self.level = level
        self.count = 0
        self._ctx: Any = None

    def __enter__(self) -> ShardWriter:
        import zstandard

        self._ctx = atomic_write(self.path, "wb")
        raw = self._ctx.__enter__()
        self._zf = zstandard.ZstdCompressor(level=self.level).stream_writer(raw, closefd=False)
        return self

    def write(self, record: dict[str, Any] | Document) -> None:
        if isinstance(record, Document):
            record = record.to_record()
        self._zf.write(encode_record(record))
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        try:
            self._zf.close()
        finally:
            self._ctx.__exit__(*exc)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file (plain, .gz or .zst).

    The one JSONL reader of lmforge: a missing file, invalid JSON or a line that is not an
    object raises LmforgeError naming the file and line ("path:N: ...").
    """
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: file not found")
    try:
        with open_text_lines(path) as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LmforgeError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise LmforgeError(
                        f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                    )
                yield lineno, record
    except UnicodeDecodeError as e:
        raise LmforgeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_documents(path: str | os.PathLike) -> Iterator[Document]:
    """Documents of one shard written by `ShardWriter`; a bad line raises LmforgeError naming file and
    line."""
    for lineno, record in iter_jsonl(path):
        if "id" not in record or not isinstance(record.get("text"), str):
            raise LmforgeError(f"{path}: line {lineno}: expected keys 'id' and 'text' (a string)")
        yield Document.from_record(record)


class open_text_lines:
    """Context manager yielding an iterator of decoded lines of a .zst, .gz or plain file."""

    def __init__(self, path: Path, errors: str = "strict"):
        self.path = path
        self.errors = errors
        self._stack: list[Any] = []

    def __enter__(self) -> Iterator[str]:
        raw = open(self.path, "rb")
        self._stack.append(raw)
        name = self.path.name
        if name.endswith(".zst"):
            import zstandard

            stream: Any = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            self._stack.append(stream)
        elif name.endswith(".gz"):
            import gzip

            stream = gzip.GzipFile(fileobj=raw)
            self._stack.append(stream)
        else:
            stream = raw
        return iter(io.TextIOWrapper(stream, encoding="utf-8", errors=self.errors, newline="\n"))

    def __exit__(self, *exc: object) -> None:
        for obj in reversed(self._stack):
            obj.close()
