"""The pretrain stage end to end on a tiny run directory: real `lmforge pretrain` processes,
SIGKILL + exact resume, the time budget, TensorBoard, load_model on the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmforge.data.embedded import embedded_documents
from lmforge.shards import tokenize_documents
from lmforge.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A run directory holding tokenizer/ and tokens/ (small: a few scenes of one play)."""
    base = tmp_path_factory.mktemp("prepared")
    text = embedded_documents("shakespeare")[0][1][:120_000]
    docs = [text[i : i + 6000] for i in range(0, len(text), 6000)]
    tok = Tokenizer.train(docs, vocab_size=320)
    tok.save(base / "tokenizer")
    tokenize_documents(tok, docs, base / "tokens", val_fraction=0.2, seed=1, progress=False)
    return base


def make_run(prepared: Path, tmp_path: Path, name: str, **train) -> Path:
    """A recipe (stages: [pretrain]) whose run dir already holds the tokenizer and tokens."""
    import shutil

    run_dir = tmp_path / name
    run_dir.mkdir()
    shutil.copytree(prepared / "tokenizer", run_dir / "tokenizer")
    shutil.copytree(prepared / "tokens", run_dir / "tokens")
    cfg = dict(
        max_steps=40,
        batch_tokens=256,
        micro_batch=4,
        seq_len=32,
        lr=3e-3,
        warmup_steps=5,
        eval_every=20,
        eval_tokens=1024,
        checkpoint_every=10,
        keep_last=2,
        samples=0,
    )
    cfg.update(train)
    recipe = {
        "name": name,
        "seed": 7,
        "run_dir": str(run_dir),
        "stages": ["pretrain"],
        "model": {"n_layer": 2, "d_model": 32, "n_head": 4, "max_seq_len": 32, "dropout": 0.1},
        "train": cfg,
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / f"{name}.yaml"


def pretrain_cmd(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lmforge", "pretrain", str(recipe), *extra]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    return e


def losses(run_dir: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(prepared, tmp_path):
    from lmforge.checkpoint.consolidated import list_checkpoints

    steps = 120
    full = make_run(prepared, tmp_path, "full", max_steps=steps, checkpoint_every=20, eval_every=50)
    subprocess.run(pretrain_cmd(full), check=True, env=env(), cwd=tmp_path, capture_output=True)
    reference = losses(tmp_path / "full")
    assert [s for s, _ in reference] == list(range(1, steps + 1))

    killed = make_run(prepared, tmp_path, "killed", max_steps=steps, checkpoint_every=20, eval_every=50)
    proc = subprocess.Popen(
        pretrain_cmd(killed), env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = tmp_path / "killed" / "pretrain" / "checkpoints"
    deadline = time.time() + 120
    while not list_checkpoints(ckpts) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = losses(tmp_path / "killed")
    assert len(done) < steps

    out = subprocess.run(
        pretrain_cmd(killed), check=True, env=env(), cwd=tmp_path, capture_output=True, text=True
    )
    assert "resumed from" in out.stderr + out.stdout
    resumed = losses(tmp_path / "killed")
    assert [s for s, _ in resumed] == list(range(1, steps + 1))
    assert resumed == reference  # bitwise: same floats, not merely close

    kept = [s for s, _ in list_checkpoints(ckpts)]
    best = json.loads((ckpts / "best.json").read_text())["step"]
    assert kept[-2:] == [steps - 20, steps] and set(kept) <= {best, steps - 20, steps}


def test_time_budget_stops_early_with_a_final_checkpoint_and_tensorboard(prepared, tmp_path, capsys):
    from lmforge.cli import main

    recipe = make_run(
        prepared,
        tmp_path,
        "budget",
        max_steps=100_000,
        max_minutes=0.05,
        checkpoint_every=0,
        eval_every=0,
        tensorboard=True,
    )
    assert main(["pretrain", str(recipe)]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "time budget" in text and "validation bits per byte" in text
    run_dir = tmp_path / "budget"
    steps = losses(run_dir)
    last = steps[-1][0]
    assert 0 < last < 100_000
    from lmforge.checkpoint.consolidated import load_model, resolve_checkpoint

    assert resolve_checkpoint(run_dir).name == f"step_{last:06d}"
    model, tok = load_model(run_dir)
    assert model.cfg.vocab_size == tok.vocab_size == 320

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "pretrain" / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [s for s, _ in steps]
    assert [e.value for e in events] == pytest.approx([v for _, v in steps], rel=1e-6)
    assert "val/bpb" in acc.Tags()["scalars"] and "val/val_bpb" not in acc.Tags()["scalars"]


@pytest.mark.slow
def test_second_run_of_a_finished_stage_is_a_no_op_and_config_change_restarts(prepared, tmp_path):
    recipe = make_run(prepared, tmp_path, "again", max_steps=12, eval_every=0)
    subprocess.run(pretrain_cmd(recipe), check=True, env=env(), cwd=tmp_path, capture_output=True)
    first = losses(tmp_path / "again")
    out = subprocess.run(
        pretrain_cmd(recipe), check=True, env=env(), cwd=tmp_path, capture_output=True, text=True
    )
    assert "already done" in out.stdout
    # Extending max_steps continues the same run; changing the lr starts over (old run moved aside).
    out = subprocess.run(
        pretrain_cmd(recipe, "--train.max_steps", "15"),
        check=True,
        env=env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "resumed from" in out.stdout + out.stderr
    assert losses(tmp_path / "again")[:12] == first and len(losses(tmp_path / "again")) == 15
    out = subprocess.run(
        pretrain_cmd(recipe, "--train.lr", "1e-3"),
        check=True,
        env=env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "starting fresh" in out.stdout + out.stderr
    assert (tmp_path / "again" / "pretrain.previous" / "checkpoints").is_dir()
    assert len(losses(tmp_path / "again")) == 12


def test_resume_always_without_checkpoint_is_a_clear_error(prepared, tmp_path, capsys):
    from lmforge.cli import main

    recipe = make_run(prepared, tmp_path, "nockpt")
    assert main(["pretrain", str(recipe), "--resume"]) == 2
    assert "no resumable checkpoint" in capsys.readouterr().err
