"""Every training stage builds its model with `build_parallel_model`: on the meta device, the plan
applied, then only each rank's shards allocated and filled. Run on real gloo ranks under DDP,
FSDP, TP and FSDP x TP, the gathered weights must equal the single-process initialisation for the
same seed bit for bit, and a checkpoint loaded shard by shard must come back exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))

from lmforge.model.transformer import Transformer  # noqa: E402
from meta_init_worker import model_config  # noqa: E402

WORKER = Path(__file__).parent / "meta_init_worker.py"
SEED = 1234


def launch(out: Path, arch: str, tied: bool, rep: int, shard: int, tp: int, ckpt: Path | None = None,
           offload: bool = False) -> dict:
    nproc = rep * shard * tp
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), str(out), arch, "1" if tied else "0", str(SEED), str(rep), str(shard), str(tp),
           "1" if offload else "0"]
    if ckpt is not None:
        cmd.append(str(ckpt))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return load_file(out)


def single_process(arch: str, tied: bool) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(SEED)
    model = Transformer(model_config(arch, tied))
    after = torch.rand(4)
    sd = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    return sd, after


LAYOUTS = [
    pytest.param("llama", False, 2, 1, 1, False, id="ddp2"),
    pytest.param("llama", False, 1, 2, 1, False, id="fsdp2"),
    pytest.param("llama", False, 1, 1, 2, False, id="tp2"),
    pytest.param("gpt2", True, 1, 2, 1, False, id="fsdp2-gpt2-tied"),
    pytest.param("gpt2", True, 1, 1, 2, False, id="tp2-gpt2-tied"),
    pytest.param("llama", False, 1, 2, 1, True, id="fsdp2-cpu-offload"),
    pytest.param("llama", False, 1, 2, 2, False, id="fsdp2xtp2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,tied,rep,shard,tp,offload", LAYOUTS)
def test_sharded_init_equals_single_process(tmp_path, arch, tied, rep, shard, tp, offload):
    got = launch(tmp_path / "full.safetensors", arch, tied, rep, shard, tp, offload=offload)
    want, after = single_process(arch, tied)
    assert torch.equal(got.pop("_rng_after"), after)
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_single_process_build_equals_plain_build():
    from lmforge.distributed import DistContext, ParallelConfig, build_parallel_model

    for arch, tied in (("llama", False), ("gpt2", True)):
        model = build_parallel_model(model_config(arch, tied), ParallelConfig(), DistContext(), seed=SEED)
        after = torch.rand(4)
        want, want_after = single_process(arch, tied)
        assert torch.equal(after, want_after)
        assert model.lm_head.weight is model.tok_emb.weight if tied else True
        for key, value in want.items():
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize(
    "rep,shard,tp,fmt",
    [
        pytest.param(1, 2, 1, "safetensors", id="fsdp2"),
        pytest.param(1, 1, 2, "safetensors", id="tp2"),
        pytest.param(1, 2, 1, "dcp", id="fsdp2-dcp"),
    ],
)
def test_checkpoint_loads_shard_by_shard(tmp_path, rep, shard, tp, fmt):
    """model.safetensors read through per-shard slices, or DCP shards, give back exactly the saved
    weights."""
    from lmforge.checkpoint.sharded import save_sharded

    torch.manual_seed(99)
    model = Transformer(model_config("llama", False))
    saved = {k: v.contiguous() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if fmt == "dcp":
        save_sharded(model, None, ckpt)
    else:
        save_file(saved, ckpt / "model.safetensors")
    got = launch(tmp_path / "full.safetensors", "llama", False, rep, shard, tp, ckpt)
    got.pop("_rng_after")
    assert set(got) == set(saved)
    for key, value in saved.items():
        assert torch.equal(got[key], value), key
