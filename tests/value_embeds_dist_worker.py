"""torchrun entry of tests/test_value_embeds_parallel.py: a model built as the pretrain stage builds
it (meta device, plan, shards replayed) and trained under a layout.

    torchrun --standalone --nproc-per-node 2 tests/value_embeds_dist_worker.py OUT_DIR LAYOUTS_JSON

Each layout: {"name", "parallel": {...ParallelConfig fields}, "value_embeds": N}.
Rank 0 writes OUT_DIR/<name>.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.distributed import build_parallel_model, setup_distributed, teardown_distributed  # noqa: E402
from lmforge.distributed.config import ParallelConfig  # noqa: E402
from lmforge.fileio import atomic_write_json  # noqa: E402

STEPS = 4


def model_config(value_embeds: int):
    return dataclasses.replace(dist_common.model_config(), value_embeds=value_embeds)


def main() -> None:
    out, layouts = Path(sys.argv[1]), json.loads(sys.argv[2])
    for lay in layouts:
        pcfg = ParallelConfig(**lay["parallel"])
        ctx = setup_distributed(pcfg, "cpu")
        model = build_parallel_model(model_config(lay["value_embeds"]), pcfg, ctx, seed=0)
        losses = dist_common.train(model, dist_common.optimizer(model), ctx, range(STEPS))
        if ctx.is_main:
            atomic_write_json(out / f"{lay['name']}.json", losses)
    teardown_distributed()


if __name__ == "__main__":
    main()
