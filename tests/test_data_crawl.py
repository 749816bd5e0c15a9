"""The demo crawl: deterministic from its seed, and recipes/shakespeare.yaml's data section removes
the planted junk with every step while the plays come out exactly as `embedded:shakespeare` reads them."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data.crawl import CRAWL_FILE, crawl_pages, crawl_warc
from lmforge.data.documents import read_documents
from lmforge.data.embedded import embedded_documents
from lmforge.data.readers import read_inputs

ROOT = Path(__file__).resolve().parents[1]


def test_the_crawl_is_deterministic_from_its_seed():
    assert crawl_warc(7) == crawl_warc(7)
    assert crawl_warc(7) != crawl_warc(8)
    kinds = Counter(p.kind for p in crawl_pages(7))
    assert kinds["play"] == len(embedded_documents("shakespeare"))
    for kind in ("mirror", "print_copy", "refetch", "toxic", "keyword_spam", "no_text", "language_fr"):
        assert kinds[kind] >= 1, kind
    urls = [p.url for p in crawl_pages(7)]
    for i, page in enumerate(crawl_pages(7)):  # every copy comes after its original
        if page.kind in ("print_copy", "refetch"):
            original = page.url.replace("/print/", "/plays/")
            assert urls.index(original) < i


def test_cli_writes_the_same_crawl_as_the_embedded_spec(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lmforge", "data", "crawl", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    from_file = list(read_inputs([str(tmp_path / CRAWL_FILE)], on_reject=lambda r: None))
    embedded = list(read_inputs(["embedded:shakespeare-crawl"], on_reject=lambda r: None))
    assert [(d.id, d.metadata["url"], d.text) for d in from_file] == [
        (d.id, d.metadata["url"], d.text) for d in embedded
    ]
    assert len(embedded) == sum(p.kind != "non_html" for p in crawl_pages())


@pytest.mark.timeout(300)
def test_demo_data_section_removes_the_junk_and_keeps_the_plays(tmp_path):
    pytest.importorskip("profanity_check")
    pytest.importorskip("resiliparse")
    from lmforge.data.pipeline import run_pipeline
    from lmforge.recipe import load_recipe

    cfg = load_recipe(str(ROOT / "recipes" / "shakespeare.yaml"), []).data
    stats = run_pipeline(cfg, tmp_path / "data", workers=1)
    dropped = {step: stats["steps"][step]["dropped"] for step in cfg.steps}
    assert dropped == {
        "extract": {"extract_empty": 6},
        "normalize": {},
        "language": {"language_de": 2, "language_fr": 2},
        "gopher_quality": {"short_doc": 3},
        "gopher_repetition": {"dup_para_frac": 3},
        "toxicity": {"toxic": 4},
        "exact_dedup": {"duplicate_content": 4, "duplicate_url": 2},
        "minhash_dedup": {"near_duplicate": 6},
    }
    assert stats["rejects"] == {"response_record_without_html": 2}  # robots.txt and an image
    docs = [
        d for shard in sorted((tmp_path / "data" / "docs").glob("*.jsonl.zst")) for d in read_documents(shard)
    ]
    assert [d.text for d in docs] == [text for _, text in embedded_documents("shakespeare")]
    assert all(d.metadata["url"].startswith("https://complete-works.example.org/plays/") for d in docs)
