"""`torchrun ... -m lmforge pretrain RECIPE --parallel.dp_shard 2` end to end: sharded checkpoints
that load_model reads in one process, and a run resumed under another layout (FSDP -> DDP, the
same data-parallel size so the data stream is the same) that ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoint.consolidated import weights_file
from lmforge.recipe import load_recipe
from lmforge.run import run_recipe

# AdamW: these runs compare world sizes to 1e-5 (Muon's bf16 Newton-Schulz agrees to 1e-4 across
# layouts: tests/test_muon_parallel.py), whatever the recipe's own optimizer
SMALL = [
    "--train.optimizer",
    "adamw",
    "--tokenizer.vocab_size",
    "384",
    "--model.n_layer",
    "2",
    "--model.d_model",
    "64",
    "--model.n_head",
    "4",
    "--train.micro_batch",
    "4",
    "--train.seq_len",
    "64",
    "--train.batch_tokens",
    "1024",
    "--train.max_minutes",
    "0",
    "--train.checkpoint_every",
    "2",
    "--train.eval_every",
    "2",
    "--train.eval_tokens",
    "2048",
    "--train.samples",
    "0",
    "--train.warmup_steps",
    "1",
]


def pretrain(run_dir: Path, steps: int, *layout: str, nproc: int = 2) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "lmforge",
        "pretrain",
        "recipes/shakespeare.yaml",
        "--run_dir",
        str(run_dir),
        "--train.max_steps",
        str(steps),
        *SMALL,
        *layout,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "base"
    root = Path(__file__).parent.parent
    recipe = load_recipe(root / "recipes/shakespeare.yaml", [*SMALL, "--run_dir", str(run_dir)])
    cwd = os.getcwd()
    try:
        os.chdir(root)
        run_recipe(recipe, only=["data", "tokenizer", "tokenize"])
    finally:
        os.chdir(cwd)
    return run_dir


@pytest.mark.slow  # ~60 s; tests/test_world_size_independence.py resumes FSDP 2 on 1 rank by default
def test_fsdp_pretrain_then_resume_under_ddp(prepared, tmp_path):
    from lmforge.checkpoint.consolidated import load_model
    from lmforge.checkpoint.sharded import is_sharded

    straight = tmp_path / "straight"
    shutil.copytree(prepared, straight)
    pretrain(straight, 4, "--parallel.dp_shard", "2")
    ckpts = straight / "pretrain" / "checkpoints"
    assert is_sharded(ckpts / "step_000004") and is_sharded(ckpts / "step_000002")

    model, tok = load_model(straight)  # the consolidated weights of the last checkpoint, one process
    assert model.cfg.n_layer == 2 and tok.vocab_size == 384
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([tok.encode("To be")]))).all()

    # kill after step 2 (drop the later checkpoint), resume the same run with DDP instead of FSDP
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "pretrain" / "checkpoints" / "step_000004")
    pretrain(resumed, 4, "--parallel.dp_replicate", "2")
    a = load_file(weights_file(ckpts / "step_000004"))  # checkpoints are DCP only: consolidated on demand
    b = load_file(weights_file(resumed / "pretrain" / "checkpoints" / "step_000004"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)

    def losses(d: Path) -> list[float]:
        rows = [json.loads(line) for line in (d / "pretrain" / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)

    # a time budget: every rank must stop at the same step (one rank leaving alone would hang the other)
    pretrain(
        resumed, 100_000, "--parallel.dp_shard", "2", "--train.max_minutes", "0.1", "--train.eval_every", "0"
    )
    steps = [
        r["step"]
        for r in map(json.loads, (resumed / "pretrain" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert 4 < steps[-1] < 100_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [["--parallel.tp", "2"], ["--parallel.pp", "2", "--parallel.pp_microbatches", "2"]],
    ids=["tp2", "pp2"],
)
def test_trainer_tp_pp_match_single_process(prepared, tmp_path, layout):
    """With one data-parallel replica the batch stream is the single process's: same losses,
    validation losses and bits per byte (TP runs with loss parallelism, the default)."""
    untied = ["--model.tie_embeddings", "false"]
    single, dist = tmp_path / "single", tmp_path / "dist"
    shutil.copytree(prepared, single)
    shutil.copytree(prepared, dist)
    root = Path(__file__).parent.parent
    cmd = [
        sys.executable,
        "-m",
        "lmforge",
        "pretrain",
        "recipes/shakespeare.yaml",
        "--run_dir",
        str(single),
        "--train.max_steps",
        "4",
        *SMALL,
        *untied,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pretrain(dist, 4, *layout, *untied)

    assert_same_curves(dist, single)


def assert_same_curves(run: Path, want: Path) -> None:
    """Training losses, validation losses and bits per byte (two validations) agree to 1e-5."""

    def rows(d: Path) -> list[dict]:
        return [json.loads(line) for line in (d / "pretrain" / "metrics.jsonl").read_text().splitlines()]

    def losses(d: Path) -> list[float]:
        return [r["loss"] for r in rows(d) if "loss" in r]

    def validation(d: Path) -> list[tuple[float, float]]:
        return [(r["val_loss"], r["val_bpb"]) for r in rows(d) if "val_loss" in r]

    assert losses(run) == pytest.approx(losses(want), rel=1e-5)
    assert len(validation(run)) == 2
    for got, expected in zip(validation(run), validation(want)):
        assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_trainer_pipeline_with_replicas_matches_ddp(prepared, tmp_path):
    """PP 2 x 2 data-parallel replicas on 4 ranks reads the batch stream of DDP on 2 (the same
    data-parallel size): same losses, validation losses and bits per byte."""
    untied = ["--model.tie_embeddings", "false"]
    ddp, pp_ddp = tmp_path / "ddp", tmp_path / "pp_ddp"
    shutil.copytree(prepared, ddp)
    shutil.copytree(prepared, pp_ddp)
    pretrain(ddp, 4, "--parallel.dp_replicate", "2", *untied)
    pretrain(
        pp_ddp,
        4,
        "--parallel.dp_replicate",
        "2",
        "--parallel.pp",
        "2",
        "--parallel.pp_microbatches",
        "2",
        *untied,
        nproc=4,
    )
    assert_same_curves(pp_ddp, ddp)
