"""The two scale recipes run every one of their stages under `torchrun -m lmforge run` on 2 gloo
ranks, with tiny overrides (the embedded plays for data, a small model, two steps) and their own
parallel layout kind: DDP for gpt2-124m, FSDP for llama3-1b."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.fileio import read_json
from lmforge.recipe import load_recipe

ROOT = Path(__file__).parent.parent
TINY = [
    "--data.inputs",
    "[embedded:shakespeare]",
    "--tokenizer.vocab_size",
    "320",
    "--tokenizer.max_chars",
    "300000",
    "--tokenizer.val_fraction",
    "0.05",
    "--model.n_layer",
    "2",
    "--model.d_model",
    "64",
    "--model.n_head",
    "4",
    "--model.max_seq_len",
    "64",
    "--train.micro_batch",
    "2",
    "--train.seq_len",
    "64",
    "--train.batch_tokens",
    "256",
    "--train.max_steps",
    "2",
    "--train.warmup_steps",
    "1",
    "--train.eval_every",
    "2",
    "--train.eval_tokens",
    "512",
    "--train.checkpoint_every",
    "2",
    "--train.samples",
    "0",
    "--train.compile",
    "false",
    "--train.activation_checkpointing",
    "false",
    "--train.dtype",
    "float32",
    "--train.tensorboard",
    "false",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "layout"),
    [
        ("recipes/gpt2-124m.yaml", ["--parallel.dp_replicate", "2"]),
        (
            "recipes/llama3-1b.yaml",
            [
                "--model.preset",
                '""',
                "--model.n_kv_head",
                "2",
                "--parallel.dp_shard",
                "2",
            ],  # YAML '': no preset
        ),
    ],
)
def test_scale_recipe_runs_every_stage_on_two_ranks(tmp_path, recipe, layout):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "lmforge",
        "run",
        recipe,
        "--run_dir",
        str(run_dir),
        *TINY,
        *layout,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    for stage in load_recipe(ROOT / recipe).stages:
        assert read_json(run_dir / stage / "_complete.json")["hash"], stage
    assert list((run_dir / "pretrain" / "checkpoints").glob("step_*"))
