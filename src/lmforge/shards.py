"""Token shards on disk: documents -> flat token-id files for pretraining, plus meta.json.

Layout of a tokens directory (RUN_DIR/tokens by default):

    train.bin, val.bin   flat token ids (uint16 when the vocabulary fits, else uint32), native
                         byte order, ``<|eos|>`` after every document; open with `load_tokens`
    meta.json            {dtype, vocab_size, tokenizer_hash, eos_id, train_tokens, val_tokens,
                          train_bytes, val_bytes (UTF-8 bytes of the text, for bits per byte),
                          documents, train_documents, val_documents, ...}

The train/val split is by document: a document goes to val when a hash of (seed, its position,
its id) falls below `val_fraction`, so the split is deterministic, streaming, and independent of
the worker count; when that leaves val empty (few documents) the last train document moves there.
The whole directory is written under a temp name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_rename_dir, atomic_write, atomic_write_json, read_json
from lmforge.tokenizer.bpe import available_cpus

FORMAT = "lmforge-tokens"
VERSION = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_val(seed: int, index: int, doc_id: str, val_fraction: float) -> bool:
    """Deterministic per-document split: hash(seed, position, id) mapped to [0, 1) < val_fraction."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{index}\0{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def tokenize_documents(
    tokenizer: Any,  # lmforge.tokenizer.Tokenizer
    documents: Iterable[Any],  # Document-like (.id, .text) or plain strings
    out_dir: str | Path,
    val_fraction: float = 0.05,
    seed: int = 1337,
    workers: int = 0,
    batch_chars: int = 1 << 20,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenize `documents` into out_dir/{train,val}.bin + meta.json; returns the meta.

    Streaming: the calling thread reads batches of about `batch_chars` characters while `workers`
    threads (0: every usable CPU) encode them, at most two batches a thread ahead of the writer, and
    each batch is written as soon as it is encoded. Memory is bounded by those batches plus the
    largest document, whatever the size of the corpus.
    """
    from tqdm import tqdm

    eos = tokenizer.eos_id
    if eos is None:
        raise LmforgeError("the tokenizer has no <|eos|> special token; shards put one after every document")
    dtype = token_dtype(tokenizer.vocab_size)
    threads = workers or available_cpus()
    encode = _array_encoder(tokenizer)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    stats = {f"{s}_{k}": 0 for s in SPLITS for k in ("tokens", "bytes", "documents")}
    empty = index = 0
    held: tuple[np.ndarray, int] | None = None  # the last train document, written late
    bar = tqdm(unit="B", unit_scale=True, desc="tokenize", disable=not progress, mininterval=0.5)
    with (
        atomic_write(tmp / "train.bin", "wb") as ftrain,
        atomic_write(tmp / "val.bin", "wb") as fval,
        ThreadPoolExecutor(threads, thread_name_prefix="tokenize") as pool,
    ):
        files = {"train": ftrain, "val": fval}

        def put(split: str, ids: np.ndarray, nbytes: int) -> None:
            files[split].write(ids.data)
            stats[f"{split}_tokens"] += len(ids)
            stats[f"{split}_bytes"] += nbytes
            stats[f"{split}_documents"] += 1

        def write(doc_ids: list[str], encoded: Future) -> None:
            nonlocal empty, held, index
            for doc_id, (ids, nbytes) in zip(doc_ids, encoded.result()):
                bar.update(nbytes)
                if not nbytes:
                    empty += 1
                    continue
                if is_val(seed, index, doc_id, val_fraction):
                    put("val", ids, nbytes)
                else:
                    if held is not None:
                        put("train", *held)
                    held = (ids, nbytes)
                index += 1

        pending: deque[tuple[list[str], Future]] = deque()
        for doc_ids, texts in _batches(documents, batch_chars):
            pending.append((doc_ids, pool.submit(_encode_texts, encode, texts, eos, dtype)))
            if len(pending) > 2 * threads:
                write(*pending.popleft())
        while pending:
            write(*pending.popleft())
        if held is not None:
            one_doc_val = stats["val_documents"] == 0 and val_fraction > 0 and stats["train_documents"] > 0
            put("val" if one_doc_val else "train", *held)
    bar.close()
    if index == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LmforgeError("no text to tokenize: the inputs hold no non-empty documents")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_hash": tokenizer.hash,
        "eos_id": eos,
        "bos_id": tokenizer.bos_id,
        **stats,
        "documents": index,
        "empty_documents": empty,
        "val_fraction": val_fraction,
        "seed": seed,
        **(extra_meta or {}),
    }
    atomic_write_json(tmp / "meta.json", meta)
    atomic_rename_dir(tmp, out_dir)
    return meta


def _batches(documents: Iterable[Any], batch_chars: int) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of whole documents, in batches of about `batch_chars` characters."""
    ids: list[str] = []
    texts: list[str] = []
    size = 0
    for i, doc in enumerate(documents):
        ids.append(str(i) if isinstance(doc, str) else str(doc.id))
        texts.append(doc if isinstance(doc, str) else doc.text)
        size += len(texts[-1])
        if size >= batch_chars:
            yield ids, texts
            ids, texts, size = [], [], 0
    if ids:
        yield ids, texts


def _array_encoder(tokenizer: Any) -> Callable[[str], np.ndarray]:
    """text -> ids as a uint32 array, special-token strings encoded as plain text.

    With tiktoken the ids go from its Rust encoder straight into an array (4 bytes a token, with
    the GIL released throughout), where a list would cost ~36 bytes a token and the GIL to build.
    """
    try:
        enc = tokenizer.to_tiktoken()
    except ImportError:
        return lambda text: np.array(tokenizer.encode_ordinary(text), dtype=np.uint32)

    def encode(text: str) -> np.ndarray:
        try:
            return enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates: replaced, as tiktoken's encode does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return enc.encode_to_numpy(text, disallowed_special=())

    return encode


def _encode_texts(
    encode: Callable[[str], np.ndarray], texts: list[str], eos: int, dtype: np.dtype
) -> list[tuple[np.ndarray, int]]:
    """(ids + <|eos|> in `dtype`, UTF-8 byte count) of every text; runs on a worker thread."""
    out = []
    for text in texts:
        ids = encode(text)
        arr = np.empty(len(ids) + 1, dtype=dtype)
        arr[:-1] = ids
        arr[-1] = eos
        out.append((arr, len(text.encode("utf-8", "surrogatepass"))))
    return out


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The meta.json of a tokens directory, checked for the keys readers rely on."""
    path = Path(directory) / "meta.json"
    if not path.exists():
        raise LmforgeError(
            f"{path}: not found; {directory} is not a tokens directory (run `lmforge tokenize`)"
        )
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LmforgeError(f'{path}: not lmforge token shards (expected "format": "{FORMAT}")')
    if meta.get("version") != VERSION:
        raise LmforgeError(
            f"{path}: unknown token shard version {meta.get('version')!r} (this lmforge reads {VERSION})"
        )
    missing = [
        k for k in ("dtype", "vocab_size", "tokenizer_hash", "train_tokens", "val_tokens") if k not in meta
    ]
    if missing:
        raise LmforgeError(f"{path}: missing keys {missing}")
    return meta


def load_tokens(directory: str | Path, split: str) -> np.ndarray:
    """Memory-map `split` ('train' or 'val') of a tokens directory, checking its size against meta."""
    if split not in SPLITS:
        raise LmforgeError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    meta = read_meta(directory)
    path = Path(directory) / f"{split}.bin"
    dtype = np.dtype(meta["dtype"])
    expected = int(meta[f"{split}_tokens"])
    if not path.exists():
        raise LmforgeError(f"{path}: not found (meta.json lists {expected} {split} tokens)")
    size = path.stat().st_size
    if size != expected * dtype.itemsize:
        raise LmforgeError(
            f"{path}: {size} bytes, but meta.json says {expected} {dtype.name} tokens = "
            f"{expected * dtype.itemsize} bytes (truncated or overwritten?)"
        )
    if expected == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def check_tokenizer(directory: str | Path, tokenizer: Any) -> None:
    """Raise when the shards in `directory` were written by a different tokenizer."""
    meta = read_meta(directory)
    if meta["tokenizer_hash"] != tokenizer.hash:
        raise LmforgeError(
            f"{Path(directory) / 'meta.json'}: the shards were made with tokenizer {meta['tokenizer_hash']}, "
            f"but the tokenizer given is {tokenizer.hash}; re-run `lmforge tokenize` with this tokenizer"
        )
