"""Under more than one process, training checkpoints are DCP only (`train.async_checkpoint`: DCP's
async save): nothing is gathered on one rank at a save. The commands that load a model
consolidate a sharded checkpoint into its `model.safetensors` once, on first use, through the
safe sharded reader."""

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

from lmforge.checkpoint.consolidated import WEIGHTS, list_checkpoints, load_model, weights_file
from lmforge.checkpoint.sharded import is_sharded
from test_hostile_checkpoints import pickle_payload
from test_parallel_trainer import prepared, pretrain  # noqa: F401  (prepared: the module fixture)
from test_world_size_independence import losses, single_process

ROOT = Path(__file__).parent.parent


def lmforge(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def async_run(prepared, tmp_path_factory) -> Path:  # noqa: F811
    """FSDP on 2 ranks with async checkpoints at steps 2 and 4 (keep_last 2)."""
    run = tmp_path_factory.mktemp("dcp") / "async"
    shutil.copytree(prepared, run)
    pretrain(run, 4, "--parallel.dp_shard", "2", "--train.async_checkpoint", "true")
    return run


def test_distributed_checkpoints_hold_shards_and_no_consolidated_weights(async_run):
    root = async_run / "pretrain" / "checkpoints"
    found = list_checkpoints(root)
    assert [s for s, _ in found] == [2, 4]
    for _, d in found:
        assert is_sharded(d) and not (d / WEIGHTS).exists()
        assert {"config.json", "state.json", "optimizer.pt", "tokenizer"} <= {p.name for p in d.iterdir()}
        assert set(torch.load(d / "optimizer.pt", weights_only=True)) == {"rng_cpu"}  # no optimizer copy
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # every async save was published
    assert json.loads((root / "step_000004" / "state.json").read_text())["loader"]["position"] == 4 * 16


def test_async_checkpoint_resumes_exactly_on_one_process(async_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(async_run, run)
    shutil.rmtree(run / "pretrain" / "checkpoints" / "step_000004")
    (run / "pretrain" / "_complete.json").unlink(missing_ok=True)
    single_process(run, 4, "--train.resume", "always")
    want, got = losses(async_run), losses(run)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5 and len(got) == len(want) == 4
    a = load_file(run / "pretrain" / "checkpoints" / "step_000004" / WEIGHTS)  # written by the single process
    b = load_file(weights_file(async_run / "pretrain" / "checkpoints" / "step_000004"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)


def test_commands_consolidate_a_sharded_checkpoint_once(async_run, tmp_path):
    ckpt = tmp_path / "step_000002"
    shutil.copytree(async_run / "pretrain" / "checkpoints" / "step_000002", ckpt)
    proc = lmforge("generate", "--model", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = (ckpt / WEIGHTS).stat()
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]
    proc = lmforge("export", "--model", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ckpt / WEIGHTS).stat().st_ino == first.st_ino  # read from the cache, not consolidated again
    model, _ = load_model(ckpt)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


def test_consolidation_reads_the_shards_through_the_safe_reader(async_run, tmp_path):
    ckpt = tmp_path / "step_000002"
    shutil.copytree(async_run / "pretrain" / "checkpoints" / "step_000002", ckpt)
    marker = tmp_path / "ran"
    pickle_payload(ckpt / "dcp" / ".metadata", marker)
    proc = lmforge("generate", "--model", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "2")
    assert not marker.exists(), "the payload ran"
    assert proc.returncode == 2 and str(ckpt / "dcp" / ".metadata") in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (ckpt / WEIGHTS).exists()
