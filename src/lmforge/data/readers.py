"""Read raw sources into Documents: text, JSONL (.gz/.zst), Parquet, WARC, HTML folders, embedded corpora.

A spec is a file, a folder (read recursively, known suffixes only), a glob, ``embedded:shakespeare``,
``embedded:shakespeare-crawl`` (the plays as a web crawl with planted junk, `crawl.py`) or
``hf:NAME[:CONFIG][:SPLIT]`` (a Hugging Face dataset, streamed, when the ``datasets`` package is
installed; offline it reads the dataset's snapshot in the local hub cache).
`expand_inputs` turns specs into a sorted list of *units* (one file each); the pipeline makes
its tasks over units. Readers only parse formats: HTML stays HTML (flagged `HTML_FLAG`) for
the `extract` step.

Hostile input never raises out of a reader: a record that cannot be read (invalid UTF-8,
malformed or non-standard JSON, a number too large, nesting too deep, a lone surrogate, a
truncated or corrupt archive, a WARC record without HTML, an empty file, a file name that is
not UTF-8) is passed to `on_reject` with its source, position and reason, and reading goes on
with the next record (for a damaged archive: what was readable before the damage is kept).
Without a callback a reject raises `LmforgeError` naming the file and line. Every document a
reader yields encodes as standard JSON (`documents.encode_record`).
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from lmforge.data.crawl import CRAWL_NAME, crawl_warc
from lmforge.data.documents import HTML_FLAG, Document
from lmforge.data.embedded import EMBEDDED_PREFIX, embedded_documents
from lmforge.data.rejects import OnReject, Reject, printable_path, raise_reject
from lmforge.errors import LmforgeError

HF_PREFIX = "hf:"
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
WARC_SUFFIXES = (".warc", ".warc.gz")
HTML_SUFFIXES = (".html", ".htm")
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + WARC_SUFFIXES + HTML_SUFFIXES
EXCERPT_CHARS = 200
# a JSON escape of a UTF-16 surrogate (\ud800-\udfff): the one way a JSON line decodes to a string
# that is not valid Unicode, when the surrogate is not part of a pair
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def file_format(path: str) -> str | None:
    name = path.lower()
    for fmt, suffixes in (
        ("jsonl", JSONL_SUFFIXES),
        ("text", TEXT_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
        ("warc", WARC_SUFFIXES),
        ("html", HTML_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return fmt
    return None


def expand_inputs(specs: list[str]) -> list[str]:
    """Specs -> sorted, de-duplicated units (file paths, embedded:NAME, hf:NAME)."""
    units: list[str] = []
    for spec in specs:
        if spec.startswith((EMBEDDED_PREFIX, HF_PREFIX)):
            units.append(spec)
            continue
        if any(ch in spec for ch in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and file_format(m) and not _hidden(m)]
            if not files:
                raise LmforgeError(
                    f"input {spec!r}: the pattern matches no readable file ({', '.join(KNOWN_SUFFIXES)})"
                )
            units.extend(files)
        elif os.path.isdir(spec):
            files = sorted(
                str(p)
                for p in Path(spec).rglob("*")
                if p.is_file() and file_format(p.name) and not _hidden(p)
            )
            if not files:
                raise LmforgeError(
                    f"input folder {spec}: no files with a known suffix ({', '.join(KNOWN_SUFFIXES)})"
                )
            units.extend(files)
        elif os.path.isfile(spec):
            if file_format(spec) is None:
                raise LmforgeError(
                    f"input {spec}: unknown file type (expected one of {', '.join(KNOWN_SUFFIXES)})"
                )
            units.append(spec)
        else:
            raise LmforgeError(f"input {spec!r}: no such file, folder or glob match")
    return sorted(dict.fromkeys(units))


def _hidden(path: str | Path) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in Path(path).parts[-1:])


def read_inputs(
    specs: list[str], text_field: str = "text", on_reject: OnReject | None = None
) -> Iterator[Document]:
    """Documents of every spec, in a deterministic order (HTML documents still flagged as HTML)."""
    for unit in expand_inputs(specs):
        yield from read_unit(unit, text_field=text_field, on_reject=on_reject)


def read_unit(
    unit: str,
    text_field: str = "text",
    on_reject: OnReject | None = None,
    max_bytes: int = 0,
) -> Iterator[Document]:
    """Documents of one unit from `expand_inputs`. A file or line over `max_bytes` (0: no limit)
    is rejected as too_long without being read into memory."""
    reject = on_reject or raise_reject
    if unit.startswith(EMBEDDED_PREFIX):
        name = unit[len(EMBEDDED_PREFIX) :]
        if name == CRAWL_NAME:  # the demo crawl, generated in memory and read as any WARC is
            yield from _warc_documents(io.BytesIO(crawl_warc()), unit, reject)
            return
        for doc_id, text in embedded_documents(name):
            yield Document(id=doc_id, text=text, source=unit)
        return
    if unit.startswith(HF_PREFIX):
        yield from _read_hf(unit, text_field, reject)
        return
    try:
        unit.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir hands such bytes over as surrogates; no output could hold them
        reject(Reject(printable_path(unit), "file", "file name is not valid UTF-8 (rename the file)"))
        return
    fmt = file_format(unit)
    try:
        if os.path.getsize(unit) == 0:
            reject(Reject(unit, "file", "empty file"))
            return
    except OSError as e:
        reject(Reject(unit, "file", f"cannot read: {e.strerror}"))
        return
    readers = {
        "text": _read_text,
        "jsonl": _read_jsonl,
        "parquet": _read_parquet,
        "warc": _read_warc,
        "html": _read_html,
    }
    yield from readers[fmt](unit, text_field, reject, max_bytes)  # type: ignore[index]


# ---------------------------------------------------------------------------- formats


def _decode(data: bytes, source: str, position: str, reject: OnReject) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        excerpt = data[max(0, e.start - 20) : e.start + 20].decode("utf-8", "replace")
        reject(Reject(source, position, f"invalid UTF-8 ({e.reason} at byte {e.start})", excerpt))
        return None


def _too_big(path: str, max_bytes: int, reject: OnReject) -> bool:
    size = os.path.getsize(path)
    if max_bytes and size > max_bytes:
        reject(
            Reject(path, "file", f"too_long: {size} bytes > the {max_bytes}-byte limit (data.max_doc_chars)")
        )
        return True
    return False


def _read_text(path: str, text_field: str, reject: OnReject, max_bytes: int = 0) -> Iterator[Document]:
    if _too_big(path, max_bytes, reject):
        return
    with open(path, "rb") as f:
        data = f.read()
    text = _decode(data, path, "file", reject)
    if text is not None:
        yield Document(id=path, text=text, source=path)


def _read_html(path: str, text_field: str, reject: OnReject, max_bytes: int = 0) -> Iterator[Document]:
    if _too_big(path, max_bytes, reject):
        return
    with open(path, "rb") as f:
        data = f.read()
    yield Document(id=path, text=decode_html(data), source=path, metadata={HTML_FLAG: True})


def decode_html(data: bytes, charset: str | None = None) -> str:
    """HTML bytes -> str: UTF-8, else the declared charset, else cp1252 with replacement (never fails).

    A declared charset that decodes to lone surrogates (utf-7, unicode_escape, ...) counts as failed.
    """
    for enc in ("utf-8", charset):
        if enc:
            try:
                text = data.decode(enc)
            except (UnicodeDecodeError, LookupError, ValueError):
                continue
            if enc == "utf-8" or not _SURROGATE.search(text):
                return text
    return data.decode("cp1252", errors="replace")


class CorruptArchive(Exception):
    """A compressed stream that cannot be decoded past some point."""


# what decompressing a damaged .gz / .zst raises, after the data before the damage came out
_ARCHIVE_ERRORS = (EOFError, OSError, zlib.error, CorruptArchive)


def _binary_lines(path: str, max_bytes: int = 0) -> Iterator[bytes | None]:
    """Raw lines of a plain, .gz or .zst file (None for a line over `max_bytes`, which is skipped
    unread); a truncated or corrupt archive raises one of _ARCHIVE_ERRORS after its last full line."""
    with open(path, "rb") as raw:
        if path.endswith(".zst"):
            yield from _split_lines(_zstd_chunks(raw), max_bytes)
        elif path.endswith(".gz"):
            import gzip

            with gzip.GzipFile(fileobj=raw) as gz:
                yield from _split_lines(
                    iter(lambda: gz.read1(1 << 16), b""), max_bytes
                )  # read1: partial data before a cut
        else:
            yield from _split_lines(iter(lambda: raw.read(1 << 20), b""), max_bytes)


def _zstd_chunks(raw: Any, size: int = 1 << 16) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-frame) zstd stream, as soon as they decode; EOFError if truncated.

    The input goes in small pieces: a piece that holds a damaged block raises without returning
    what it decoded, so small pieces lose little more than the damaged block itself.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj = dctx.decompressobj()
    while chunk := raw.read(size):
        while chunk:
            try:
                out = obj.decompress(chunk)
            except zstandard.ZstdError as e:
                raise CorruptArchive(f"zstd: {e}") from None
            if out:
                yield out
            chunk = obj.unused_data if obj.eof else b""
            if obj.eof and chunk:
                obj = dctx.decompressobj()
    if not obj.eof:
        raise EOFError("zstd stream ended in the middle of a frame (truncated file)")


def _split_lines(chunks: Iterator[bytes], max_bytes: int = 0) -> Iterator[bytes | None]:
    pending: list[bytes] = []
    size, skipping = 0, False
    for chunk in chunks:
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if skipping or (max_bytes and size + nl + 1 - start > max_bytes):
                skipping = False
                yield None
            else:
                pending.append(chunk[start : nl + 1])
                yield b"".join(pending)
            pending.clear()
            size, start = 0, nl + 1
        if start < len(chunk) and not skipping:
            pending.append(chunk[start:])
            size += len(chunk) - start
            if max_bytes and size > max_bytes:
                pending.clear()
                size, skipping = 0, True
    if skipping:
        yield None
    elif pending:
        yield b"".join(pending)


def _numbered_lines(path: str, max_bytes: int, reject: OnReject) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw line) of a file; damage to an archive ends it with one reject at the damaged line."""
    lineno = 0
    try:
        for lineno, line in enumerate(_binary_lines(path, max_bytes), 1):  # noqa: B007
            yield lineno, line
    except _ARCHIVE_ERRORS as e:
        reject(Reject(path, f"line {lineno + 1}", f"truncated or corrupt archive: {e}"))


class NonStandardJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise NonStandardJSON(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonStandardJSON(f"the number {text[:40]} overflows a double")
    return value


# one decoder for every line: json.loads with hooks would build a new one per call
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_json_line(line: str) -> tuple[Any, str]:
    """(value, "") or (None, why not): strict JSON as RFC 8259 has it, in bounds Python can hold."""
    try:
        return _STRICT_DECODER.decode(line), ""
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg} at column {e.colno})"
    except NonStandardJSON as e:
        return None, f"non-standard JSON ({e})"
    except ValueError as e:  # int() refuses more than sys.get_int_max_str_digits() digits
        return None, f"number too large ({str(e).split(';')[0]})"
    except RecursionError:
        return None, "nested too deeply (JSON arrays/objects deeper than the parser's recursion limit)"


def _lone_surrogate(record: dict) -> str:
    """The first unpaired surrogate in the record's keys or strings, escaped (\\udXXX); "" if none."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return e.object[e.start : e.end].encode("unicode_escape").decode("ascii")
    return ""


def _read_jsonl(path: str, text_field: str, reject: OnReject, max_bytes: int = 0) -> Iterator[Document]:
    yield from _jsonl_documents(path, _numbered_lines(path, max_bytes, reject), text_field, reject, max_bytes)


def read_jsonl_range(
    path: str,
    start: int,
    end: int,
    first_line: int,
    text_field: str = "text",
    on_reject: OnReject | None = None,
    max_bytes: int = 0,
) -> Iterator[Document]:
    """Documents of the lines in bytes [start, end) of an uncompressed JSONL file, `start` being the
    beginning of line number `first_line`: the same documents, ids and rejects as reading the whole
    file gives for those lines."""
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start

        def chunks() -> Iterator[bytes]:
            nonlocal left
            while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                left -= len(chunk)
                yield chunk

        lines = enumerate(_split_lines(chunks(), max_bytes), first_line)
        yield from _jsonl_documents(path, lines, text_field, on_reject or raise_reject, max_bytes)


def _jsonl_documents(
    path: str, lines: Iterator[tuple[int, bytes | None]], text_field: str, reject: OnReject, max_bytes: int
) -> Iterator[Document]:
    for lineno, line in lines:
        pos = f"line {lineno}"
        if line is None:
            reject(Reject(path, pos, f"too_long: line over the {max_bytes}-byte limit (data.max_doc_chars)"))
            continue
        if not line.strip():
            continue
        text_line = _decode(line, path, pos, reject)
        if text_line is None:
            continue
        excerpt = text_line[:EXCERPT_CHARS]
        record, why = parse_json_line(text_line)
        if why:
            reject(Reject(path, pos, why, excerpt))
            continue
        if not isinstance(record, dict):
            reject(Reject(path, pos, f"expected a JSON object, got {type(record).__name__}", excerpt))
            continue
        text = record.get(text_field)
        if not isinstance(text, str):
            found = "missing" if text is None else type(text).__name__
            reject(Reject(path, pos, f"text field {text_field!r} is {found} (expected a string)", excerpt))
            continue
        if _SURROGATE_ESCAPE.search(line) and (bad := _lone_surrogate(record)):
            reject(Reject(path, pos, f"lone surrogate {bad} in a string or key (not valid Unicode)", excerpt))
            continue
        yield _jsonl_document(record, text_field, text, path, lineno)


def _jsonl_document(record: dict, text_field: str, text: str, path: str, lineno: int) -> Document:
    """Our own shards carry id/source/metadata; for other JSONL, extra fields become metadata."""
    metadata = dict(record["metadata"]) if isinstance(record.get("metadata"), dict) else {}
    for key, value in record.items():
        if key not in (text_field, "id", "source", "metadata"):
            metadata[key] = value
    doc_id = record.get("id")
    return Document(
        id=str(doc_id) if doc_id is not None else f"{path}#{lineno}",
        text=text,
        source=str(record.get("source") or path),
        metadata=metadata,
    )


def _read_parquet(path: str, text_field: str, reject: OnReject, max_bytes: int = 0) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            reject(
                Reject(
                    path, "file", f"no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})"
                )
            )
            return
        for batch in pf.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                text = record.get(text_field)
                if not isinstance(text, str):
                    reject(Reject(path, f"row {row}", f"column {text_field!r} is not a string"))
                    continue
                yield _jsonl_document(_json_safe(record), text_field, text, path, row)
    except (pa.ArrowException, OSError, ValueError, TypeError) as e:  # a damaged file, footer or page
        reject(Reject(path, f"row {row + 1}", f"unreadable parquet: {type(e).__name__}: {e}"))


def _json_safe(value: Any) -> Any:
    """A column value as standard JSON: NaN and infinities -> null, other types (dates, bytes) -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def _read_warc(path: str, text_field: str, reject: OnReject, max_bytes: int = 0) -> Iterator[Document]:
    with open(path, "rb") as f:
        ends = yield from _warc_documents(f, path, reject)
    if ends is None:
        return
    offset, end = ends
    # warcio ends quietly on a cut file: check the gzip members, or that the last plain record
    # is followed by its \r\n\r\n terminator
    if path.endswith(".gz") and not _gzip_complete(path):
        reject(
            Reject(
                path, f"offset {offset}", "truncated or corrupt WARC: the gzip stream is cut short or damaged"
            )
        )
    elif not path.endswith(".gz") and end:
        with open(path, "rb") as f:
            f.seek(end)
            tail = f.read(64)
        if len(tail) < 2 or tail.strip():
            reject(
                Reject(path, f"offset {offset}", "truncated or corrupt WARC: the last record is cut short")
            )


def _warc_documents(
    stream: Any, source: str, reject: OnReject
) -> Generator[Document, None, tuple[int, int] | None]:
    """HTML documents of the `response` records of a WARC stream; returns (offset, end) of the last
    record, or None when the stream was unreadable (rejected)."""
    from warcio.archiveiterator import ArchiveIterator

    offset = end = 0
    try:
        it = ArchiveIterator(stream)
        for record in it:
            body = record.content_stream().read()  # before get_record_offset, which consumes the record
            offset = it.get_record_offset()
            end = offset + it.get_record_length()
            if record.rec_type != "response":
                continue
            url = record.rec_headers.get_header("WARC-Target-URI") or ""
            rec_id = record.rec_headers.get_header("WARC-Record-ID") or f"{source}@{offset}"
            ctype = record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
            pos = f"offset {offset}"
            if "html" not in ctype.lower() and not _looks_like_html(body):
                reject(
                    Reject(
                        source,
                        pos,
                        f"response record without HTML (Content-Type {ctype or 'missing'!r})",
                        url,
                    )
                )
                continue
            yield Document(
                id=rec_id,
                text=decode_html(body, _charset(ctype)),
                source=source,
                metadata={HTML_FLAG: True, "url": url, "warc_offset": offset},
            )
    except Exception as e:  # warcio raises assorted errors on truncated/corrupt archives
        reject(Reject(source, f"offset {offset}", f"truncated or corrupt WARC: {type(e).__name__}: {e}"))
        return None
    return offset, end


def _gzip_complete(path: str) -> bool:
    """Whether every gzip member of the file is complete and intact (a cheap second pass, no parsing)."""
    with open(path, "rb") as f:
        obj = zlib.decompressobj(wbits=31)
        while chunk := f.read(1 << 20):
            while chunk:
                try:
                    obj.decompress(chunk)
                except zlib.error:
                    return False
                chunk = obj.unused_data if obj.eof else b""
                if obj.eof and chunk:
                    obj = zlib.decompressobj(wbits=31)
        return obj.eof


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<body" in head


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"' ")
    return None


def parse_hf_spec(unit: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][:SPLIT]` -> (name, config or None, split; default train). `hf:NAME::SPLIT`
    gives a split with the default config."""
    name, _, rest = unit[len(HF_PREFIX) :].partition(":")
    config, _, split = rest.partition(":")
    if not name or ":" in split:
        raise LmforgeError(f"input {unit!r}: expected hf:NAME[:CONFIG][:SPLIT]")
    return name, config or None, split or "train"


def _hf_source(name: str) -> str:
    """What `datasets.load_dataset` should open: a local folder as it is; offline (HF_HUB_OFFLINE), the
    dataset's snapshot in the local hub cache; otherwise the hub name, streamed from the hub."""
    if os.path.isdir(name):
        return name
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not constants.HF_HUB_OFFLINE:
        return name
    try:
        return snapshot_download(name, repo_type="dataset", local_files_only=True)
    except LocalEntryNotFoundError:
        raise LmforgeError(
            f"input hf:{name}: offline (HF_HUB_OFFLINE) and no snapshot of it in the local hub "
            f"cache {constants.HF_HUB_CACHE}"
        ) from None


def _read_hf(unit: str, text_field: str, reject: OnReject) -> Iterator[Document]:
    """Rows of a Hugging Face dataset, streamed (`streaming=True`: shards are read as they are
    iterated, never materialised or converted to Arrow on disk)."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise LmforgeError(
            f"input {unit}: Hugging Face datasets need the `datasets` package (pip install 'lmforge[hf]')"
        ) from None
    name, config, split = parse_hf_spec(unit)
    try:
        ds = datasets.load_dataset(_hf_source(name), config, split=split, streaming=True)
    except (OSError, ValueError) as e:  # not found, no connection, an unknown config or split
        raise LmforgeError(f"input {unit}: cannot open the dataset: {type(e).__name__}: {e}") from None
    row = 0
    try:
        for row, record in enumerate(ds, 1):  # noqa: B007
            text = record.get(text_field)
            if not isinstance(text, str):
                reject(Reject(unit, f"row {row}", f"field {text_field!r} is not a string"))
                continue
            yield _jsonl_document(_json_safe(dict(record)), text_field, text, unit, row)
    except Exception as e:  # a damaged shard surfaces mid-stream as whatever its reader raises
        reject(Reject(unit, f"row {row + 1}", f"unreadable dataset shard: {type(e).__name__}: {e}"))
