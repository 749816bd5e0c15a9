"""torchrun entry of the distributed tests: runs a list of layouts in one process group.

    torchrun --standalone --nproc-per-node N tests/dist_worker.py OUT_DIR LAYOUTS_JSON

Each layout: {"name", "parallel": {...ParallelConfig fields}, "steps": [a, b], "arch", "tied",
"resume": name of an earlier layout whose checkpoint to load first, "meta": build on the meta
device with `build_parallel_model`}. Rank 0 writes OUT_DIR/<name>/losses.json and, after
training, val.json (`dist_common.validate`); every layout saves a sharded checkpoint to
OUT_DIR/<name>/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.checkpoint.sharded import load_sharded, save_sharded  # noqa: E402
from lmforge.distributed import build_parallel_model, parallelize, setup_distributed, teardown_distributed  # noqa: E402
from lmforge.distributed.config import ParallelConfig  # noqa: E402
from lmforge.fileio import atomic_write_json  # noqa: E402


def main() -> None:
    out, layouts = Path(sys.argv[1]), json.loads(sys.argv[2])
    for lay in layouts:
        pcfg = ParallelConfig(**lay["parallel"])
        ctx = setup_distributed(pcfg, "cpu")
        # a resumed layout starts from different weights: only the checkpoint can make it match
        if lay.get("meta"):  # built on the meta device, sharded, then materialised and initialised
            cfg = dist_common.model_config(lay.get("arch", "llama"), lay.get("tied", False))
            model = build_parallel_model(cfg, pcfg, ctx, seed=0)
        else:
            model = dist_common.build(
                lay.get("arch", "llama"), lay.get("tied", False), seed=99 if lay.get("resume") else 0
            )
            model = parallelize(model, pcfg, ctx)
        opt = dist_common.optimizer(model)
        if lay.get("resume"):
            load_sharded(model, opt, out / lay["resume"])
        pipe = dist_common.pipeline(model, ctx, pcfg)
        losses = dist_common.train(model, opt, ctx, range(*lay["steps"]), pipe)
        val = dist_common.validate(model, ctx, pipe)
        save_sharded(model, opt, out / lay["name"])
        if ctx.is_main:
            atomic_write_json(out / lay["name"] / "losses.json", losses)
            atomic_write_json(out / lay["name"] / "val.json", val)
    teardown_distributed()


if __name__ == "__main__":
    main()
