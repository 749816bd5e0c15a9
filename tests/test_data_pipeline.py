"""The data pipeline end to end: steps, stats, rejects, dedup, determinism, kill-and-resume, CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmforge.cli import main as cli_main
from lmforge.data.config import DataConfig
from lmforge.data.documents import read_documents
from lmforge.data.pipeline import run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from test_data_readers import ARTICLE, write_warc  # noqa: E402

VOCAB = (
    "the of and to in that have with be it is was for on are as his they at one this from by "
    "river mountain history science people music garden quickly system data model theory city "
    "water light stone paper window forest animal language number country winter summer"
).split()


def prose(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(VOCAB) for _ in range(rng.randint(8, 16))]
        out.append(" ".join(words).capitalize() + ".")
    return "\n".join(" ".join(out[i : i + 3]) for i in range(0, len(out), 3))


def make_inputs(root: Path, files: int = 4, docs_per_file: int = 40, seed: int = 0) -> list[str]:
    """JSONL files of prose with exact and near duplicates planted across files, plus junk."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    originals = []
    for f in range(files):
        lines = []
        for i in range(docs_per_file):
            text = prose(rng, rng.randint(12, 30))
            r = rng.random()
            if originals and r < 0.1:
                text = rng.choice(originals)  # exact duplicate
            elif originals and r < 0.2:
                words = rng.choice(originals).split(" ")
                words[rng.randrange(len(words))] = "changed"  # near duplicate (one word)
                text = " ".join(words)
            elif r < 0.25:
                text = "buy now\n" * 30  # junk
            originals.append(text)
            lines.append(json.dumps({"text": text, "url": f"http://site{f}.example/{i}"}))
        (root / f"part{f:02d}.jsonl").write_text("\n".join(lines) + "\n")
    return [str(root / "*.jsonl")]


STEPS = [
    "normalize",
    "language",
    "gopher_quality",
    "gopher_repetition",
    "fineweb",
    "pii",
    "exact_dedup",
    "minhash_dedup",
]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pipeline_end_to_end(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    write_warc(
        tmp_path / "in" / "crawl.warc.gz",
        [
            ("http://example.com/rivers", "text/html", ARTICLE.encode()),
            ("http://example.com/img", "image/png", b"\x89PNG\r\n"),
        ],
    )
    (tmp_path / "in" / "bad.jsonl").write_bytes(b'{"text": "fine text"}\n{"text": oops\n\xff\xfe\n')
    cfg = DataConfig(
        inputs=inputs + [str(tmp_path / "in" / "crawl.warc.gz"), str(tmp_path / "in" / "bad.jsonl")],
        steps=["extract", *STEPS],
        workers=1,
    )
    cfg.gopher_quality.min_doc_words = 20
    stats = run_pipeline(cfg, tmp_path / "out")
    out = tmp_path / "out"
    saved = json.loads((out / "stats.json").read_text())
    assert saved["output"] == stats["output"]
    s = saved["steps"]
    assert s["extract"]["in_docs"] == saved["input"]["documents"]
    assert s["exact_dedup"]["dropped"]["duplicate_content"] > 0
    assert s["minhash_dedup"]["dropped"]["near_duplicate"] > 0
    junk = {**s["gopher_quality"]["dropped"], **s["gopher_repetition"]["dropped"]}
    assert sum(junk.values()) > 0
    assert all(len(s["gopher_quality"]["examples"][r]) <= 3 for r in s["gopher_quality"]["dropped"])
    assert saved["rejects"] == {"malformed_json": 1, "invalid_utf-8": 1, "response_record_without_html": 1}
    # each step's output is the next step's input, and the output is what the last step kept
    for a, b in zip(saved["steps_order"], saved["steps_order"][1:]):
        assert s[a]["out_docs"] == s[b]["in_docs"]
    docs = [d for p in sorted((out / "docs").glob("*.jsonl.zst")) for d in read_documents(p)]
    assert len(docs) == saved["output"]["documents"] == s["minhash_dedup"]["out_docs"]
    assert any("civilisations" in d.text for d in docs)
    assert len({d.text for d in docs}) == len(docs)
    rejects = [
        json.loads(line)
        for p in (out / "rejects").glob("*.jsonl.zst")
        for line in __import__("zstandard").ZstdDecompressor().stream_reader(p.open("rb")).read().splitlines()
    ]
    assert {r["position"] for r in rejects} >= {"line 2", "line 3"}
    assert all(r["source"] and r["reason"] for r in rejects)
    summary = (out / "summary.md").read_text()
    assert "| minhash_dedup |" in summary and "near_duplicate" in summary
    assert not (out / "_work").exists()


def test_output_independent_of_workers(tmp_path):
    inputs = make_inputs(tmp_path / "in", files=5, docs_per_file=20)
    trees = []
    for workers in (1, 2):
        cfg = DataConfig(inputs=inputs, steps=STEPS, workers=workers)
        cfg.gopher_quality.min_doc_words = 20
        run_pipeline(cfg, tmp_path / f"out{workers}")
        trees.append(tree_bytes(tmp_path / f"out{workers}"))
    assert trees[0] == trees[1] and len([k for k in trees[0] if k.startswith("docs/")]) >= 4


def test_too_long_document_is_rejected(tmp_path):
    (tmp_path / "in").mkdir()
    big = "word " * (10 * 1024 * 1024)  # one 50 MB line
    with open(tmp_path / "in" / "big.jsonl", "w") as f:
        f.write(json.dumps({"text": "a small normal document."}) + "\n" + json.dumps({"text": big}) + "\n")
    stats = run_pipeline(DataConfig(inputs=[str(tmp_path / "in")], steps=["normalize"]), tmp_path / "out")
    assert stats["output"]["documents"] == 1 and stats["rejects"] == {"too_long": 1}


def write_recipe(path: Path, run_dir: Path, inputs: list[str], **data) -> Path:
    recipe = {
        "name": "t",
        "run_dir": str(run_dir),
        "data": {"inputs": inputs, "steps": STEPS, "gopher_quality": {"min_doc_words": 20}, **data},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_killed_worker_then_resume_gives_identical_output(tmp_path):
    inputs = make_inputs(tmp_path / "in", files=16, docs_per_file=50, seed=3)
    ref = write_recipe(tmp_path / "ref.yaml", tmp_path / "ref", inputs, workers=1)
    assert cli_main(["data", str(ref)]) == 0
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", inputs, workers=2)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmforge", "data", str(recipe)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    import psutil

    work = tmp_path / "run" / "data" / "_work"
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and killed is None:
        done = list(work.glob("t*/stats.json"))
        try:
            children = [
                c
                for c in psutil.Process(proc.pid).children()
                if "resource_tracker" not in " ".join(c.cmdline())
            ]  # pool workers only
        except psutil.Error:
            children = []
        if done and children:
            killed = children[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert killed is not None, "the run finished before a worker could be killed"
    assert proc.returncode != 0 and b"worker process died" in err
    n_done = len(list(work.glob("t*/stats.json")))
    assert 0 < n_done < 16
    assert cli_main(["data", str(recipe)]) == 0  # resume
    assert tree_bytes(tmp_path / "run" / "data") == tree_bytes(tmp_path / "ref" / "data")


def test_dry_run_writes_nothing(tmp_path, capsys):
    inputs = make_inputs(tmp_path / "in", files=2, docs_per_file=30)
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", inputs)
    assert cli_main(["data", str(recipe), "--dry-run", "--sample", "25"]) == 0
    out = capsys.readouterr().out
    assert "input: 25 documents" in out and "| gopher_repetition |" in out
    assert not (tmp_path / "run").exists()


def test_train_classifier_and_filter(tmp_path):
    rng = random.Random(5)
    good = [{"text": prose(rng, 6)} for _ in range(150)]
    spam = [
        {
            "text": " ".join(
                rng.choice(
                    ["buy", "cheap", "pills", "casino", "win", "free", "now", "click", "offer", "deal"]
                )
                for _ in range(60)
            )
            + "."
        }
        for _ in range(150)
    ]
    (tmp_path / "good.jsonl").write_text("\n".join(json.dumps(d) for d in good[:100]))
    (tmp_path / "spam.jsonl").write_text("\n".join(json.dumps(d) for d in spam[:100]))
    model = tmp_path / "q.npz"
    assert (
        cli_main(
            [
                "data",
                "train-classifier",
                "--positive",
                str(tmp_path / "good.jsonl"),
                "--negative",
                str(tmp_path / "spam.jsonl"),
                "--out",
                str(model),
                "--epochs",
                "60",
            ]
        )
        == 0
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mix.jsonl").write_text("\n".join(json.dumps(d) for d in good[100:] + spam[100:]))
    cfg = DataConfig(inputs=[str(tmp_path / "in")], steps=["classifier"])
    cfg.classifier.path = str(model)
    stats = run_pipeline(cfg, tmp_path / "out")
    assert stats["steps"]["classifier"]["dropped"] == {"below_threshold": 50}
    assert stats["output"]["documents"] == 50


def test_language_and_pii_and_wordlist(tmp_path):
    (tmp_path / "in").mkdir()
    rows = [
        "The river flows through the old town and the people walk along it. Write to jane.doe@example.org "
        "or visit 10.0.0.1 for the schedule of the boats on the water.",
        "Der Fluss fließt durch die alte Stadt und die Menschen gehen an ihm entlang, "
        "wenn die Sonne scheint.",
        "This is a fucking terrible sentence about the river and the town that nobody wants to read.",
    ]
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in rows))
    cfg = DataConfig(inputs=[str(tmp_path / "in")], steps=["language", "wordlist", "pii"])
    stats = run_pipeline(cfg, tmp_path / "out")
    docs = list(read_documents(tmp_path / "out" / "docs" / "00000.jsonl.zst"))
    assert len(docs) == 1 and "<EMAIL>" in docs[0].text and "<IP>" in docs[0].text
    assert docs[0].metadata["language"] == "en"
    assert stats["steps"]["language"]["dropped"] == {"language_de": 1}
    assert stats["steps"]["wordlist"]["dropped"] == {"listed_words": 1}
    assert stats["steps"]["pii"]["counters"] == {"emails_masked": 1, "ips_masked": 1}


def test_stopword_language_fallback():
    from lmforge.data.langid import stopword_detect

    assert stopword_detect("the cat and the dog are in the house with all of their friends")[0] == "en"
    assert stopword_detect("der Hund und die Katze sind in dem Haus mit einer Maus")[0] == "de"


def test_shakespeare_recipe_data_stage(tmp_path):
    from lmforge.recipe import load_recipe
    from lmforge.stages.data import run_stage

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "shakespeare.yaml")
    t0 = time.time()
    run_stage(recipe, tmp_path)
    assert time.time() - t0 < 60
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["output"]["documents"] >= 37
    from lmforge.data.readers import read_inputs

    assert len(list(read_inputs([str(tmp_path / "data" / "docs")]))) == stats["output"]["documents"]


def test_bad_config_is_a_clear_error(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"data": {"steps": ["normalise"]}}))
    with pytest.raises(LmforgeError, match="did you mean 'normalize'"):
        load_recipe(p)
    p.write_text(yaml.safe_dump({"data": {"steps": ["exact_dedup", "normalize"]}}))
    with pytest.raises(LmforgeError, match="must come last"):
        load_recipe(p)


def test_ray_executor_without_ray_is_a_clear_error(tmp_path, monkeypatch):
    from lmforge.errors import LmforgeError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    inputs = make_inputs(tmp_path / "in", files=1, docs_per_file=3)
    with pytest.raises(LmforgeError, match=r"needs the `ray` package"):
        run_pipeline(DataConfig(inputs=inputs, steps=["normalize"], executor="ray"), tmp_path / "out")


def test_html_input_without_extract_step_is_rejected_not_kept(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "page.html").write_text(ARTICLE)
    stats = run_pipeline(DataConfig(inputs=[str(tmp_path / "in")], steps=["normalize"]), tmp_path / "out")
    assert stats["output"]["documents"] == 0 and stats["rejects"] == {"html_without_extract": 1}


def test_every_registered_step_is_built_from_its_own_section():
    import dataclasses

    from lmforge.data.process import build_steps
    from lmforge.data.registry import DOC_STEPS

    sections = {f.name for f in dataclasses.fields(DataConfig)}
    assert set(DOC_STEPS) <= sections
    cfg = DataConfig(steps=[s for s in DOC_STEPS if s != "classifier"])
    cfg.extract.isolation = "signal"
    steps = build_steps(cfg)
    assert [s.name for s in steps] == cfg.steps
    assert all(s.cfg is getattr(cfg, s.name) for s in steps)
