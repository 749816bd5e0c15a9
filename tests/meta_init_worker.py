"""torchrun worker of test_meta_init.py: build the model with `build_parallel_model` under the
layout given on the command line, then gather its full state dict onto rank 0 and save it.

usage: meta_init_worker.py OUT_FILE ARCH TIED SEED DP_REPLICATE DP_SHARD TP OFFLOAD [CHECKPOINT]
With OFFLOAD 1 the FSDP2 groups must carry a CPUOffloadPolicy (`parallel.cpu_offload`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy

from lmforge.distributed import ParallelConfig, build_parallel_model, setup_distributed, teardown_distributed
from lmforge.model.config import ModelConfig

SHAPES = {
    # vocab 97 and d_ff 88 do not divide evenly by the shard counts: FSDP pads the last shard
    "llama": dict(vocab_size=97, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=88, max_seq_len=64),
    "gpt2": dict(vocab_size=97, n_layer=2, d_model=32, n_head=4, max_seq_len=64, arch="gpt2"),
}


def model_config(arch: str, tied: bool) -> ModelConfig:
    return ModelConfig(**SHAPES[arch], tie_embeddings=tied)


def main() -> None:
    out, arch, tied, seed, rep, shard, tp, offload = sys.argv[1:9]
    init_from = Path(sys.argv[9]) if len(sys.argv) > 9 else None
    pcfg = ParallelConfig(dp_replicate=int(rep), dp_shard=int(shard), tp=int(tp), cpu_offload=offload == "1")
    ctx = setup_distributed(pcfg, "cpu")
    cfg = model_config(arch, tied == "1")
    model = build_parallel_model(cfg, pcfg, ctx, seed=int(seed), init_from=init_from)
    if pcfg.cpu_offload:
        groups = [m._get_fsdp_state()._fsdp_param_group for m in (model, *model.layers.values())]
        assert all(isinstance(g.offload_policy, CPUOffloadPolicy) for g in groups)
    after = torch.rand(4)  # the generator must end where a single-process build leaves it
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.is_main:
        full = {k: v.contiguous() for k, v in full.items() if not (tied == "1" and k == "lm_head.weight")}
        save_file({**full, "_rng_after": after}, out)
    teardown_distributed()


if __name__ == "__main__":
    main()
