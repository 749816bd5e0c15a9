"""torchrun entry of tests/test_qk_norm_parallel.py: the tiny model with QK-norm trained under a
layout, built from a plain model (`parallelize`) or on the meta device (`build_parallel_model`).

    torchrun --standalone --nproc-per-node 2 tests/qk_norm_dist_worker.py OUT_DIR LAYOUTS_JSON

Each layout: {"name", "parallel": {...ParallelConfig fields}, "meta": bool}. Rank 0 writes
OUT_DIR/<name>.json (the losses); every rank writes OUT_DIR/<name>.rank<r>.pt, its full copy of
every weight after training (DTensors gathered, plain tensors as this rank holds them), so a
replicated weight that drifted apart between ranks shows; and the layout saves a sharded
checkpoint to OUT_DIR/<name>/.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.checkpoint.sharded import save_sharded  # noqa: E402
from lmforge.distributed import build_parallel_model, parallelize, setup_distributed, teardown_distributed  # noqa: E402
from lmforge.distributed.config import ParallelConfig  # noqa: E402
from lmforge.fileio import atomic_write_json  # noqa: E402

STEPS = 4


def model_config():
    return dataclasses.replace(dist_common.model_config(), qk_norm=True)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for name, p in model.named_parameters()
    }


def main() -> None:
    out, layouts = Path(sys.argv[1]), json.loads(sys.argv[2])
    for lay in layouts:
        pcfg = ParallelConfig(**lay["parallel"])
        ctx = setup_distributed(pcfg, "cpu")
        if lay.get("meta"):
            model = build_parallel_model(model_config(), pcfg, ctx, seed=0)
        else:
            torch.manual_seed(0)
            model = parallelize(dist_common.Transformer(model_config()), pcfg, ctx)
        opt = dist_common.optimizer(model)
        losses = dist_common.train(model, opt, ctx, range(STEPS))
        torch.save(full_weights(model), out / f"{lay['name']}.rank{ctx.rank}.pt")
        save_sharded(model, opt, out / lay["name"])
        if ctx.is_main:
            atomic_write_json(out / f"{lay['name']}.json", losses)
    teardown_distributed()


if __name__ == "__main__":
    main()
