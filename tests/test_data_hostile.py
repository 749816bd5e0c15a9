"""Hostile input and faults in the data pipeline: a bad record is a reject (never a crash, never
silent loss), output shards are standard JSON, and a killed run leaves nothing behind."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zstandard

from lmforge.cli import main as cli_main
from lmforge.data.config import DataConfig
from lmforge.data.documents import encode_record
from lmforge.data.pipeline import run_pipeline
from lmforge.data.readers import read_unit

sys.path.insert(0, str(Path(__file__).parent))
from test_data_pipeline import make_inputs, tree_bytes, write_recipe  # noqa: E402
from test_data_readers import ARTICLE, write_warc  # noqa: E402

GOOD = [json.dumps({"text": f"good line {i} " + "word " * (i % 7)}) for i in range(2000)]
SRC = str(Path(__file__).parents[1] / "src")


def strict_json(line: str):
    """json.loads that refuses what RFC 8259 does not allow (NaN, Infinity)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def read(path, **kw):
    rejects = []
    docs = list(read_unit(str(path), on_reject=rejects.append, **kw))
    return docs, rejects


def corrupt_middle(data: bytes) -> bytes:
    """4 kB of zeros over the middle of the file (damage a zstd block check detects)."""
    mid = len(data) // 2
    return data[:mid] + bytes(4096) + data[mid + 4096 :]


def hostile_lines(bad: bytes) -> bytes:
    """A good line, the bad one, then two good lines: the bad record is line 2."""
    return b"\n".join([GOOD[0].encode(), bad, GOOD[1].encode(), GOOD[2].encode()]) + b"\n"


LINE_CLASSES = {
    "lone surrogate in a value": (b'{"text": "\\ud800"}', "lone surrogate \\ud800"),
    "lone surrogate in a key": (b'{"text": "fine", "\\udc01": 1}', "lone surrogate \\udc01"),
    "100k-deep nesting": (
        b'{"text": "x", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nested too deeply",
    ),
    "5000-digit integer": (b'{"text": "x", "n": ' + b"7" * 5000 + b"}", "number too large"),
    "NaN": (b'{"text": "x", "score": NaN}', "non-standard JSON (NaN"),
    "Infinity": (b'{"text": "x", "score": -Infinity}', "non-standard JSON (-Infinity"),
    "float overflow": (b'{"text": "x", "score": 1e999}', "non-standard JSON (the number 1e999"),
}


@pytest.mark.parametrize("name", list(LINE_CLASSES))
def test_bad_line_is_one_reject_at_its_line_and_the_rest_is_kept(tmp_path, name):
    bad, reason = LINE_CLASSES[name]
    data = hostile_lines(bad)
    for suffix, blob in (
        (".jsonl", data),
        (".jsonl.gz", gzip.compress(data)),
        (".jsonl.zst", zstandard.ZstdCompressor().compress(data)),
    ):
        (tmp_path / f"f{suffix}").write_bytes(blob)
        docs, rejects = read(tmp_path / f"f{suffix}")
        assert [d.text for d in docs] == [json.loads(GOOD[i])["text"] for i in range(3)], suffix
        assert [(r.position, r.reason.startswith(reason)) for r in rejects] == [("line 2", True)], rejects
        for d in docs:
            strict_json(encode_record(d.to_record()).decode())


def test_surrogate_pair_escapes_are_text_not_rejects(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "smile \\ud83d\\ude00", "k\\u00e9y": 1}\n')
    docs, rejects = read(tmp_path / "a.jsonl")
    assert not rejects and docs[0].text == "smile \U0001f600" and docs[0].metadata == {"kéy": 1}


def test_damaged_archives_keep_what_was_readable(tmp_path):
    rng = random.Random(2)
    lines = [json.dumps({"text": f"line {i} {rng.randbytes(24).hex()}"}) for i in range(8000)]
    originals = [json.loads(g)["text"] for g in lines]
    data = ("\n".join(lines) + "\n").encode()  # 600 kB that compresses to about half: several blocks
    (tmp_path / "noise.jsonl.zst").write_bytes(random.Random(0).randbytes(5000))
    docs, rejects = read(tmp_path / "noise.jsonl.zst")
    assert docs == [] and len(rejects) == 1 and rejects[0].position == "line 1"
    assert rejects[0].reason.startswith("truncated or corrupt archive")
    for name, blob in (
        ("mid.jsonl.zst", zstandard.ZstdCompressor().compress(data)),
        ("mid.jsonl.gz", gzip.compress(data)),
    ):
        (tmp_path / name).write_bytes(corrupt_middle(blob))
        docs, rejects = read(tmp_path / name)
        texts = [d.text for d in docs]
        assert rejects, name
        if name.endswith(".zst"):  # zstd stops at the damaged block: the lines before it, one reject there
            first_bad = int(rejects[0].position.split()[1])
            assert len(lines) // 4 < first_bad < len(lines)
            assert texts == originals[: first_bad - 1]
            assert len(rejects) == 1 and "corrupt" in rejects[0].reason
        else:  # deflate decodes on through the damage (its CRC is at the end): the lines before it are kept
            assert texts[: len(lines) // 4] == originals[: len(lines) // 4]
            assert any("corrupt" in r.reason or "malformed" in r.reason for r in rejects)


def test_file_name_that_is_not_utf8_is_a_reject(tmp_path):
    name = os.fsdecode(b"caf\xe9.jsonl")
    (tmp_path / name).write_text(GOOD[0] + "\n")
    (tmp_path / "ok.jsonl").write_text(GOOD[1] + "\n")
    stats = run_pipeline(DataConfig(inputs=[str(tmp_path)], steps=["normalize"], workers=1), tmp_path / "out")
    assert stats["output"]["documents"] == 1 and stats["rejects"] == {"file_name_is_not_valid_utf-8": 1}
    rejects = rejects_of(tmp_path / "out")
    assert len(rejects) == 1 and rejects[0]["position"] == "file"
    assert rejects[0]["source"].endswith("caf\\xe9.jsonl")


def rejects_of(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted((out / "rejects").glob("*.jsonl.zst"))
        for line in zstandard.ZstdDecompressor().stream_reader(p.open("rb")).read().splitlines()
    ]


def test_pipeline_over_every_hostile_class_finishes_with_standard_json(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i, (bad, _) in enumerate(LINE_CLASSES.values()):
        (inp / f"c{i}.jsonl").write_bytes(hostile_lines(bad))
    (inp / "noise.jsonl.zst").write_bytes(random.Random(0).randbytes(5000))
    data = ("\n".join(GOOD[:500]) + "\n").encode()
    (inp / "mid.jsonl.zst").write_bytes(corrupt_middle(zstandard.ZstdCompressor().compress(data)))
    cfg = DataConfig(inputs=[str(inp)], steps=["normalize", "exact_dedup"], workers=1)
    stats = run_pipeline(cfg, tmp_path / "out")
    shards = sorted((tmp_path / "out" / "docs").glob("*.jsonl.zst"))
    lines = [
        line
        for p in shards
        for line in zstandard.ZstdDecompressor().stream_reader(p.open("rb")).read().decode().splitlines()
    ]
    assert len(lines) == stats["output"]["documents"] > 0
    for line in lines:
        strict_json(line)
    rejects = rejects_of(tmp_path / "out")
    classes = tuple(f"c{i}.jsonl" for i in range(len(LINE_CLASSES)))
    assert [r["position"] for r in rejects if r["source"].endswith(classes)] == ["line 2"] * len(LINE_CLASSES)
    before = tree_bytes(tmp_path / "out")
    run_pipeline(cfg, tmp_path / "out")  # a rerun neither fails nor changes a byte
    assert tree_bytes(tmp_path / "out") == before


# ---------------------------------------------------------------------------- fuzz


def base_files(root: Path) -> list[Path]:
    """One small valid file per reader."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    data = ("\n".join(GOOD[:200]) + "\n").encode()
    (root / "a.jsonl").write_bytes(data)
    (root / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (root / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (root / "a.txt").write_text("plain text\n" * 50)
    (root / "a.html").write_text(ARTICLE)
    pages = [(f"http://e.com/{i}", "text/html", ARTICLE.encode()) for i in range(5)]
    write_warc(root / "a.warc", pages)
    write_warc(root / "a.warc.gz", pages)
    pq.write_table(
        pa.table({"text": [f"row {i}" for i in range(200)], "x": [i / 7 for i in range(200)]}),
        root / "a.parquet",
    )
    return sorted(root.iterdir())


def mutations(data: bytes, rng: random.Random) -> list[bytes]:
    n = len(data)
    out = [data[: n // 3], data[: n - 1], data[:7]]  # truncation
    for flips in (1, 8, 64):  # bit flips
        b = bytearray(data)
        for _ in range(flips):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    b = bytearray(data)
    start = rng.randrange(n)
    b[start : start + 256] = rng.randbytes(256)  # a run of random bytes
    out += [bytes(b), rng.randbytes(n)]
    injected = (
        b'{"text": "\\udfff"}',
        b'{"text": "x", "d": ' + b"{" * 50_000 + b"}",
        b'{"text": "x", "n": ' + b"9" * 6000 + b"}",
        b'{"text": NaN}',
        b'{"\\ud800": "k", "text": "t"}',
    )
    for payload in injected:  # hostile records spliced into the middle
        cut = data.find(b"\n", n // 2) + 1 or n
        out.append(data[:cut] + payload + b"\n" + data[cut:])
    return out


def test_fuzz_no_reader_raises_and_every_document_is_standard_json(tmp_path):
    rng = random.Random(1234)
    runs = 0
    for base in base_files(tmp_path / "base"):
        for i, blob in enumerate(mutations(base.read_bytes(), rng)):
            path = tmp_path / "m" / f"{i:02d}{''.join(base.suffixes)}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(blob)
            docs, _ = read(path, max_bytes=1 << 20)  # must not raise
            for d in docs:
                strict_json(encode_record(d.to_record()).decode("utf-8"))
            runs += 1
    assert runs == 8 * 13


# ---------------------------------------------------------------------------- kills


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Inputs and the output of an uninterrupted run, shared by the kill tests."""
    root = tmp_path_factory.mktemp("kills")
    inputs = make_inputs(root / "in", files=16, docs_per_file=60, seed=11)
    ref = write_recipe(root / "ref.yaml", root / "ref", inputs, workers=1)
    assert cli_main(["data", str(ref)]) == 0
    return root, inputs, tree_bytes(root / "ref" / "data")


def start_data_run(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-m", "lmforge", "data", str(recipe)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pool_workers(pid: int) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children() if "resource_tracker" not in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_killed_parent_takes_its_workers_and_the_rerun_is_identical(tmp_path, reference):
    root, inputs, ref_tree = reference
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", inputs, workers=2)
    proc = start_data_run(recipe)
    work = tmp_path / "run" / "data" / "_work"
    workers: list[psutil.Process] = []
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        workers = pool_workers(proc.pid)
        if len(workers) == 2 and list(work.glob("t*/stats.json")):
            break
        time.sleep(0.01)
    assert len(workers) == 2 and proc.poll() is None, "the run finished before its parent could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and not all(gone(w) for w in workers):
        time.sleep(0.05)
    assert all(gone(w) for w in workers), "a worker outlived its killed parent"
    assert cli_main(["data", str(recipe)]) == 0
    assert tree_bytes(tmp_path / "run" / "data") == ref_tree


def test_kill_during_the_write_phase_leaves_no_temp_files_after_the_rerun(tmp_path, reference):
    root, inputs, ref_tree = reference
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", inputs, workers=1)
    out = tmp_path / "run" / "data"
    proc = start_data_run(recipe)
    stale: list[Path] = []
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not stale:
        if (out / "docs").is_dir():
            stale = list((out / "docs").glob(".tmp-*"))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stale, "the run finished before a shard write could be interrupted"
    assert not (out / "stats.json").exists()
    assert list((out / "docs").glob(".tmp-*")), "the kill left no half-written shard to clean up"
    assert cli_main(["data", str(recipe)]) == 0
    assert tree_bytes(out) == ref_tree  # byte-identical, and no .tmp-* left anywhere (tree_bytes lists them)
