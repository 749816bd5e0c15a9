"""torchrun entry of tests/test_muon_parallel.py: Muon + AdamW (`build_optimizer`) under a layout.

    torchrun --standalone --nproc-per-node N tests/muon_dist_worker.py OUT_DIR LAYOUTS_JSON

Each layout: {"name", "parallel": {...ParallelConfig fields}, "steps": [a, b], "resume": name of an
earlier layout whose sharded checkpoint (weights + both optimizers' state) to load first}. Rank 0
writes OUT_DIR/<name>/losses.json; every layout saves a sharded checkpoint to OUT_DIR/<name>/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.checkpoint.sharded import load_sharded, save_sharded  # noqa: E402
from lmforge.distributed import parallelize, setup_distributed, teardown_distributed  # noqa: E402
from lmforge.distributed.config import ParallelConfig  # noqa: E402
from lmforge.fileio import atomic_write_json  # noqa: E402
from lmforge.train.config import TrainConfig  # noqa: E402
from lmforge.train.optim import build_optimizer  # noqa: E402

MUON = TrainConfig(optimizer="muon", lr=dist_common.LR, muon_lr=0.02, embedding_lr=2 * dist_common.LR)


def main() -> None:
    out, layouts = Path(sys.argv[1]), json.loads(sys.argv[2])
    for lay in layouts:
        pcfg = ParallelConfig(**lay["parallel"])
        ctx = setup_distributed(pcfg, "cpu")
        model = parallelize(dist_common.build(seed=99 if lay.get("resume") else 0), pcfg, ctx)
        opt = build_optimizer(model, MUON)
        if lay.get("resume"):
            load_sharded(model, opt, out / lay["resume"])
        losses = dist_common.train(model, opt, ctx, range(*lay["steps"]))
        save_sharded(model, opt, out / lay["name"])
        if ctx.is_main:
            atomic_write_json(out / lay["name"] / "losses.json", losses)
    teardown_distributed()


if __name__ == "__main__":
    main()
