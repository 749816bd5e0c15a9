"""`torchrun --nproc-per-node 2 -m lmforge run RECIPE`: the single-process stages run once (on rank
0) while the other rank waits on the run directory, the training stage runs on both ranks, and a
stage that fails on rank 0 stops every rank with its message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.fileio import read_json

ROOT = Path(__file__).parent.parent
TINY = [
    "--tokenizer.vocab_size",
    "300",
    "--model.n_layer",
    "1",
    "--model.d_model",
    "32",
    "--model.n_head",
    "2",
    "--train.micro_batch",
    "2",
    "--train.seq_len",
    "32",
    "--train.batch_tokens",
    "128",
    "--train.max_minutes",
    "0",
    "--train.max_steps",
    "2",
    "--train.eval_every",
    "2",
    "--train.eval_tokens",
    "256",
    "--train.samples",
    "0",
    "--train.warmup_steps",
    "1",
    "--parallel.dp_replicate",
    "2",
]


SINGLE_PROCESS = [
    ("data", "raw sources -> clean documents"),
    ("tokenizer", "train the BPE tokenizer"),
    ("tokenize", "documents -> token shards"),
]


def torchrun(run_dir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--tee",
        "3",
        "-m",
        "lmforge",
        "run",
        "recipes/shakespeare.yaml",
        "--run_dir",
        str(run_dir),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def test_torchrun_run_runs_single_process_stages_once(tmp_path):
    run_dir = tmp_path / "run"
    proc = torchrun(
        run_dir,
        "--stages",
        "data,tokenizer,tokenize,pretrain",
        "--data.inputs",
        "[embedded:shakespeare]",
        "--data.steps",
        "[normalize]",
        "--tokenizer.max_chars",
        "200000",
        *TINY,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for stage, summary in SINGLE_PROCESS:
        started = {
            line.split(":", 1)[0] for line in out.splitlines() if f"[lmforge] {stage}: {summary}" in line
        }
        assert started == {"[default0]"}, (stage, started)
        assert read_json(run_dir / stage / "_complete.json")["hash"]
    started = {line.split(":", 1)[0] for line in out.splitlines() if "[lmforge] pretrain: pretrain" in line}
    assert started == {"[default0]", "[default1]"}, started
    assert read_json(run_dir / "pretrain" / "_complete.json")["launch"]
    assert not list(run_dir.glob("*/_failed.json"))


def test_torchrun_run_stops_every_rank_when_rank0_fails(tmp_path):
    run_dir = tmp_path / "run"
    proc = torchrun(
        run_dir,
        "--stages",
        "data",
        "--parallel.dp_replicate",
        "2",
        "--data.inputs",
        f"[{tmp_path / 'missing' / '*.jsonl'}]",
        timeout=120,
    )
    assert proc.returncode != 0  # the job ends: no rank is left waiting for a marker that never comes
    failed = read_json(run_dir / "data" / "_failed.json")
    assert "missing" in failed["error"] and failed["hash"]
    assert "lmforge run: error: input" in proc.stdout + proc.stderr


def test_a_waiting_rank_stops_with_rank0s_failure(tmp_path):
    """Where the launcher does not stop the job itself (another node's agent still waiting, say), a rank
    that waits on a stage rank 0 failed raises rank 0's message instead of waiting for ever."""
    from lmforge.errors import LmforgeError
    from lmforge.fileio import atomic_write_json
    from lmforge.run import failure_path, wait_for_stage

    record = {"hash": "h1", "launch": "", "error": "OSError: disk full"}
    atomic_write_json(failure_path(tmp_path, "data"), record)
    with pytest.raises(LmforgeError, match=r"data: failed on rank 0 \(OSError: disk full\)"):
        wait_for_stage(tmp_path, "data", "h1", this_launch=False, poll_seconds=0.01)
