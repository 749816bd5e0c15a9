"""Readers: every source format, and bad input that must be rejected (never crash, never lose silently)."""

from __future__ import annotations

import gzip
import io
import json
import sys

import pytest

from lmforge.data.documents import Document, ShardWriter, read_documents
from lmforge.data.extract import ExtractConfig
from lmforge.data.inputs import read_text_documents
from lmforge.data.readers import expand_inputs, read_inputs
from lmforge.errors import LmforgeError

ARTICLE = """<html><head><title>Rivers</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav>
<div id="cookie-banner">We use cookies to improve your experience. Accept all cookies.</div>
<article><h1>The history of rivers</h1>
<p>Rivers have shaped the growth of human settlements for thousands of years, providing water,
food and a means of transport to the people who lived along their banks.</p>
<p>The great civilisations of the ancient world grew up beside rivers such as the Nile, the Tigris
and the Euphrates, whose floods brought fertile soil to the surrounding plains every year.</p>
<p>Today rivers remain important for agriculture, industry and recreation, and many cities still
depend on them for their drinking water and for the energy produced by dams.</p>
</article>
<footer>Copyright 2024 Example Corp. All rights reserved. Privacy policy. Terms of use.</footer>
</body></html>"""


def write_warc(path, records):
    """records: (url, content_type, body bytes)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=str(path).endswith(".gz"))
        for url, ctype, body in records:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )


def collect(specs, extract=True, **kw):
    """Documents and rejects of `specs`: as text (HTML extracted), or as the readers parse them."""
    rejects = []
    read = read_text_documents if extract else read_inputs
    docs = list(read([str(s) for s in specs], on_reject=rejects.append, **kw))
    return docs, rejects


def test_shards_roundtrip(tmp_path):
    docs = [Document(f"d{i}", f"text {i} ünïcode", "src", {"k": i}) for i in range(5)]
    with ShardWriter(tmp_path / "a.jsonl.zst") as w:
        for d in docs:
            w.write(d)
    assert w.count == 5 and list(read_documents(tmp_path / "a.jsonl.zst")) == docs
    with ShardWriter(tmp_path / "b.jsonl.zst") as w:
        w.write(docs[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl.zst", "b.jsonl.zst"]  # no temp files left
    # a folder of shards reads back through read_inputs with ids, sources and metadata intact
    back, rejects = collect([tmp_path])
    assert back == docs + docs[:1] and not rejects


def test_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    (tmp_path / "a.txt").write_text("plain text file\n")
    lines = "".join(json.dumps({"body": f"json {i}", "url": f"http://x/{i}"}) + "\n" for i in range(3))
    (tmp_path / "b.jsonl").write_text(lines)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(pa.table({"body": ["pq one", "pq two"], "n": [1, 2]}), tmp_path / "e.parquet")
    docs, rejects = collect(
        [tmp_path / "b.jsonl", tmp_path / "c.jsonl.gz", tmp_path / "d.jsonl.zst", tmp_path / "e.parquet"],
        text_field="body",
    )
    assert not rejects
    assert [d.text for d in docs] == ["json 0", "json 1", "json 2"] * 3 + ["pq one", "pq two"]
    assert docs[0].metadata["url"] == "http://x/0" and docs[0].id.endswith("b.jsonl#1")
    assert docs[-1].metadata["n"] == 2
    docs, _ = collect([tmp_path / "*.txt"])
    assert [d.text for d in docs] == ["plain text file\n"]


def test_warc_and_html_extraction(tmp_path):
    write_warc(
        tmp_path / "crawl.warc.gz",
        [
            ("http://example.com/rivers", "text/html; charset=utf-8", ARTICLE.encode()),
            ("http://example.com/logo.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\x00"),
        ],
    )
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "page.html").write_text(ARTICLE)
    docs, rejects = collect([tmp_path / "crawl.warc.gz", tmp_path / "site"])
    assert len(docs) == 2
    for d in docs:
        assert "civilisations of the ancient world" in d.text
        assert (
            "Accept all cookies" not in d.text
            and "All rights reserved" not in d.text
            and "Contact" not in d.text
        )
    assert docs[0].metadata["url"] == "http://example.com/rivers"
    assert (
        len(rejects) == 1 and "without HTML" in rejects[0].reason and rejects[0].position.startswith("offset")
    )
    raw, _ = collect([tmp_path / "crawl.warc.gz"], extract=False)
    assert raw[0].metadata["html"] is True and "<nav>" in raw[0].text


def test_embedded():
    docs, _ = collect(["embedded:shakespeare"])
    assert len(docs) >= 37 and all(d.source == "embedded:shakespeare" for d in docs)


def test_bad_input_is_rejected_with_position(tmp_path):
    import zstandard

    good = "".join(json.dumps({"text": f"line {i} {i * 2654435761 % 10**9}"}) + "\n" for i in range(20000))
    (tmp_path / "bad.jsonl").write_bytes(
        b'{"text": "ok one"}\n{"text": broken\n'
        + '{"text": "caf\u00e9"}\n'.encode("latin-1")
        + b'[1, 2]\n{"other": 1}\n{"text": "ok two"}\n'
    )
    (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(good.encode())[:20000])
    z = zstandard.ZstdCompressor().compress(good.encode())
    (tmp_path / "trunc.jsonl.zst").write_bytes(z[: len(z) // 2])
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin.txt").write_bytes("caf\u00e9".encode("latin-1"))
    docs, rejects = collect([tmp_path / "bad.jsonl"])
    assert [d.text for d in docs] == ["ok one", "ok two"]
    assert [(r.position, r.reason.split(" (")[0]) for r in rejects] == [
        ("line 2", "malformed JSON"),
        ("line 3", "invalid UTF-8"),
        ("line 4", "expected a JSON object, got list"),
        ("line 5", "text field 'text' is missing"),
    ]
    for name in ("trunc.jsonl.gz", "trunc.jsonl.zst"):
        docs, rejects = collect([tmp_path / name])
        assert 0 < len(docs) < 20000 and len(rejects) == 1
        assert "truncated" in rejects[0].reason and rejects[0].position == f"line {len(docs) + 1}"
    docs, rejects = collect([tmp_path / "empty.txt", tmp_path / "latin.txt"])
    assert docs == [] and [r.reason.split(" (")[0] for r in rejects] == ["empty file", "invalid UTF-8"]
    pages = [
        (f"http://e.com/{i}", "text/html", ARTICLE.replace("rivers", f"rivers {i}").encode())
        for i in range(40)
    ]
    for name in ("cut.warc.gz", "cut.warc"):
        write_warc(tmp_path / name, pages)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        docs, rejects = collect([tmp_path / name], extract=False)
        assert 0 < len(docs) < 40 and len(rejects) == 1 and "truncated" in rejects[0].reason
    write_warc(tmp_path / "whole.warc", pages)
    assert collect([tmp_path / "whole.warc"], extract=False)[1] == []
    with pytest.raises(LmforgeError, match=r"bad.jsonl: line 2: malformed JSON"):
        list(read_inputs([str(tmp_path / "bad.jsonl")]))


def test_spec_errors(tmp_path):
    with pytest.raises(LmforgeError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(LmforgeError, match="unknown file type"):
        expand_inputs([str(tmp_path / "x.bin")])
    with pytest.raises(LmforgeError, match="matches no readable file"):
        expand_inputs([str(tmp_path / "*.jsonl")])


def test_extraction_time_limit(monkeypatch):
    import os
    import time

    import trafilatura

    from lmforge.data.extract import ExtractionTimeout, ExtractStep, time_limit

    t0 = time.time()
    with pytest.raises(ExtractionTimeout):
        with time_limit(0.05):
            while True:
                pass
    assert time.time() - t0 < 2

    real = trafilatura.extract

    def stuck_on_x(html, **kwargs):
        if "<p>x</p>" in html:
            time.sleep(30)
        if "<p>boom</p>" in html:
            os._exit(1)  # a crash inside the extractor (only ever run in the sandbox child below)
        return real(html, **kwargs)

    monkeypatch.setattr(trafilatura, "extract", stuck_on_x)
    for isolation in ("signal", "process"):
        step = ExtractStep(ExtractConfig(timeout=0.5, isolation=isolation))
        t0 = time.time()
        stuck = Document("p", "<html><body><p>x</p></body></html>", metadata={"html": True})
        assert step(stuck) == "extract_timeout"
        assert time.time() - t0 < 3
        # the next page is extracted normally (the sandbox was restarted)
        ok = step(Document("q", ARTICLE, metadata={"html": True}))
        assert not isinstance(ok, str) and "civilisations" in ok.text
        step.close()
    step = ExtractStep(ExtractConfig(timeout=5, isolation="process"))
    assert (
        step(Document("b", "<html><body><p>boom</p></body></html>", metadata={"html": True}))
        == "extract_crashed"
    )
    assert "civilisations" in step(Document("q", ARTICLE, metadata={"html": True})).text
    step.close()


def test_oversized_records_are_skipped_unread(tmp_path):
    import zstandard

    from lmforge.data.readers import read_unit

    lines = [
        json.dumps({"text": "short one"}),
        json.dumps({"text": "x" * 5000}),
        json.dumps({"text": "short two"}),
    ]
    data = ("\n".join(lines) + "\n").encode()
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (tmp_path / "big.txt").write_text("y" * 5000)
    for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst"):
        rejects = []
        docs = list(read_unit(str(tmp_path / name), on_reject=rejects.append, max_bytes=1000))
        assert [d.text for d in docs] == ["short one", "short two"]
        assert [(r.position, r.reason.split(":")[0]) for r in rejects] == [("line 2", "too_long")]
    rejects = []
    assert list(read_unit(str(tmp_path / "big.txt"), on_reject=rejects.append, max_bytes=1000)) == []
    assert rejects[0].reason.startswith("too_long")


def test_hf_dataset_without_the_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(LmforgeError, match="need the `datasets` package"):
        list(read_inputs(["hf:some/dataset"]))


def test_hf_dataset_from_a_local_folder(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text('{"body": "first"}\n{"body": "second"}\n{"body": 3}\n')
    docs, rejects = collect([f"hf:{tmp_path / 'ds'}::train"], text_field="body")
    assert [d.text for d in docs] == ["first", "second"] and len(rejects) == 1


def test_hf_spec_parsing():
    from lmforge.data.readers import parse_hf_spec

    assert parse_hf_spec("hf:org/name") == ("org/name", None, "train")
    assert parse_hf_spec("hf:HuggingFaceFW/fineweb-edu:sample-10BT") == (
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
        "train",
    )
    assert parse_hf_spec("hf:org/name:cfg:test") == ("org/name", "cfg", "test")
    assert parse_hf_spec("hf:org/name::validation") == ("org/name", None, "validation")
    with pytest.raises(LmforgeError, match="expected hf:NAME"):
        parse_hf_spec("hf:a:b:c:d")


def _hub_snapshot(home, repo_id: str) -> None:
    """A dataset in the hub cache's layout (datasets--ORG--NAME/snapshots/REV + refs/main), with two
    parquet configs declared in its README, as `huggingface-cli download` leaves it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = home / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    for config, texts in (("default", ["other"]), ("sample-10BT", [f"edu doc {i}" for i in range(2500)])):
        (snap / config).mkdir(parents=True)
        half = len(texts) // 2 or 1
        for k, part in enumerate((texts[:half], texts[half:])):
            if part:
                table = pa.table(
                    {"text": part, "url": [f"http://x/{config}/{k}/{i}" for i in range(len(part))]}
                )
                pq.write_table(table, snap / config / f"train-{k:05d}-of-00002.parquet")
    configs = "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/*.parquet\n"
        for c in ("default", "sample-10BT")
    )
    (snap / "README.md").write_text(f"---\nconfigs:\n{configs}---\n# a test dataset\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)


def test_hf_dataset_streams_offline_from_the_hub_cache(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    import socket

    home = tmp_path / "hf"
    _hub_snapshot(home, "acme/webtext")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read the environment once, when imported (maybe by an earlier test)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    docs, rejects = collect(["hf:acme/webtext:sample-10BT"])
    assert [d.text for d in docs] == [f"edu doc {i}" for i in range(2500)] and not rejects
    assert (
        docs[0].metadata["url"] == "http://x/sample-10BT/0/0"
        and docs[0].id == "hf:acme/webtext:sample-10BT#1"
    )
    assert [d.text for d in collect(["hf:acme/webtext"])[0]] == ["other"]
    # streamed: nothing was converted to Arrow in the datasets cache
    assert not list((home / "datasets").rglob("*.arrow"))
    with pytest.raises(LmforgeError, match="no snapshot of it in the local hub cache"):
        collect(["hf:acme/absent"])
    with pytest.raises(LmforgeError, match="cannot open the dataset"):
        collect(["hf:acme/webtext:no-such-config"])
    # the tokenizer's inputs go through the same readers
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train((d.text for d in read_text_documents(["hf:acme/webtext:sample-10BT"])), 300)
    assert tok.decode(tok.encode("edu doc 7")) == "edu doc 7"


def test_resiliparse_backend_extracts_the_main_text(tmp_path):
    pytest.importorskip("resiliparse")
    from lmforge.data.extract import ExtractStep

    for isolation in ("signal", "process"):
        step = ExtractStep(ExtractConfig(backend="resiliparse", isolation=isolation))
        doc = step(Document("a", ARTICLE, metadata={"html": True}))
        step.close()
        assert "civilisations of the ancient world" in doc.text
        assert "All rights reserved" not in doc.text and "Contact" not in doc.text
        assert doc.text.count("\n\n") >= 2  # paragraphs stay paragraphs
    with pytest.raises(LmforgeError, match="backend must be one of"):
        ExtractStep(ExtractConfig(backend="lynx"))


def test_resiliparse_missing_names_the_extra(monkeypatch):
    from lmforge.data.extract import ExtractStep

    monkeypatch.setitem(sys.modules, "resiliparse.extract.html2text", None)
    with pytest.raises(LmforgeError, match=r"lmforge\[resiliparse\]"):
        ExtractStep(ExtractConfig(backend="resiliparse"))
