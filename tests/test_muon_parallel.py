"""Muon (+ AdamW for the rest) on real gloo processes: DDP, FSDP2 and TP give the single-process
loss curve, and a sharded checkpoint (weights + both optimizers' state) written under FSDP resumes
under TP on the exact curve. Muon's Newton-Schulz steps run on DTensor shards (fp32 on the CPU,
as `train.muon_ns_dtype: auto` picks), whose reductions run in another order, so the tolerance is
looser than the AdamW layouts' (tests/test_parallel.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.distributed import DistContext  # noqa: E402
from lmforge.train.optim import MuonAt, build_optimizer  # noqa: E402
from muon_dist_worker import MUON  # noqa: E402

RTOL = 1e-4
LAYOUTS = [
    {"name": "ddp2", "parallel": {"dp_replicate": 2}, "steps": [0, 4]},
    {"name": "fsdp2", "parallel": {"dp_shard": 2}, "steps": [0, 4]},
    {"name": "tp2", "parallel": {"tp": 2}, "steps": [0, 4]},
    {"name": "fsdp2-half", "parallel": {"dp_shard": 2}, "steps": [0, 2]},
    {"name": "resume-tp2", "parallel": {"tp": 2}, "steps": [2, 4], "resume": "fsdp2-half"},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return dist_common.run_layouts("muon_dist_worker.py", tmp_path_factory.mktemp("muon"), LAYOUTS)


@pytest.fixture(scope="module")
def reference() -> list[float]:
    model = dist_common.build()
    opt = build_optimizer(model, MUON)
    assert [type(o) for o in opt] == [MuonAt, torch.optim.AdamW] and isinstance(
        opt.optimizers[0], torch.optim.Muon
    )
    return dist_common.train(model, opt, DistContext(), range(4))


@pytest.mark.slow  # the three layouts and the resume share one ~60 s fixture of gloo runs
@pytest.mark.parametrize("name", ["ddp2", "fsdp2", "tp2"])
def test_muon_layout_matches_single_process(runs, reference, name):
    losses = json.loads((runs / name / "losses.json").read_text())
    assert losses == pytest.approx(reference, rel=RTOL)
    assert len(set(losses)) == 4  # the weights move


@pytest.mark.slow
def test_muon_sharded_checkpoint_resumes_under_another_layout(runs, reference):
    first = json.loads((runs / "fsdp2-half" / "losses.json").read_text())
    resumed = json.loads((runs / "resume-tp2" / "losses.json").read_text())
    assert first + resumed == pytest.approx(reference, rel=RTOL)
