"""Modules a stage adds beside the transformer (the reward model's value head) work under FSDP2:
they get their own FSDP group, so calling them outside the model's forward sees whole weights."""

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("reward_fsdp_worker.py")


def result(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))


def test_value_head_under_fsdp_matches_one_process():
    single = result([sys.executable, str(WORKER), "1"])
    sharded = result([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                      str(WORKER), "2"])
    assert sharded == single
