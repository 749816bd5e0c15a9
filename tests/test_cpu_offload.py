"""`parallel.cpu_offload` (FSDP2's CPUOffloadPolicy: shards, gradients and optimizer state in host
memory, ZeRO-offload) through the CLI under torchrun: the same losses and validation as FSDP
without offload on the same recipe, and a clear error where there are no FSDP shards to offload."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.recipe import load_recipe
from lmforge.run import run_recipe

ROOT = Path(__file__).parent.parent
# AdamW: these runs compare world sizes to 1e-5 (Muon's bf16 Newton-Schulz agrees to 1e-4 across
# layouts: tests/test_muon_parallel.py), whatever the recipe's own optimizer
SMALL = [
    "--train.optimizer",
    "adamw",
    "--tokenizer.vocab_size",
    "300",
    "--model.n_layer",
    "2",
    "--model.d_model",
    "32",
    "--model.n_head",
    "2",
    "--train.micro_batch",
    "2",
    "--train.seq_len",
    "32",
    "--train.batch_tokens",
    "256",
    "--train.max_minutes",
    "0",
    "--train.max_steps",
    "4",
    "--train.eval_every",
    "2",
    "--train.eval_tokens",
    "512",
    "--train.samples",
    "0",
    "--train.warmup_steps",
    "1",
]


def pretrain(run_dir: Path, *layout: str, nproc: int = 2) -> subprocess.CompletedProcess:
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
        *SMALL,
        *layout,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("offload") / "base"
    recipe = load_recipe(ROOT / "recipes/shakespeare.yaml", [*SMALL, "--run_dir", str(run_dir)])
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        run_recipe(recipe, only=["data", "tokenizer", "tokenize"])
    finally:
        os.chdir(cwd)
    return run_dir


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~40 s; tests/test_meta_init.py checks the offload policy is applied by default
def test_cpu_offload_trains_like_fsdp(prepared, tmp_path):
    plain, offload = tmp_path / "plain", tmp_path / "offload"
    shutil.copytree(prepared, plain)
    shutil.copytree(prepared, offload)
    for run_dir, extra in ((plain, []), (offload, ["--parallel.cpu_offload", "true"])):
        proc = pretrain(run_dir, "--parallel.dp_shard", "2", *extra)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    want = [r["loss"] for r in rows(plain) if "loss" in r]
    got = [r["loss"] for r in rows(offload) if "loss" in r]
    assert len(want) == 4 and got == pytest.approx(want, rel=1e-6)
    val = [v for r in rows(offload) if "val_loss" in r for v in (r["val_loss"], r["val_bpb"])]
    val_want = [v for r in rows(plain) if "val_loss" in r for v in (r["val_loss"], r["val_bpb"])]
    assert len(val) == 4 and val == pytest.approx(val_want, rel=1e-6)


@pytest.mark.slow
def test_cpu_offload_needs_fsdp_shards(prepared, tmp_path):
    run_dir = tmp_path / "ddp"
    shutil.copytree(prepared, run_dir)
    proc = pretrain(run_dir, "--parallel.dp_replicate", "2", "--parallel.cpu_offload", "true")
    assert proc.returncode != 0
    assert "parallel.cpu_offload offloads FSDP2 shards: it needs parallel.dp_shard > 1" in proc.stderr
