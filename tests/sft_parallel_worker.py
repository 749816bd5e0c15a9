"""torchrun entry of the SFT parallelism tests: the Trainer with the sft stage's objective and
loader under tensor or pipeline parallelism, on packed conversations.

    torchrun --standalone --nproc-per-node 2 tests/sft_parallel_worker.py OUT_DIR LAYOUTS_JSON

Each layout: {"name", "parallel": {...ParallelConfig fields}, "objective": "sft" (the stage's own)
or "wrapped" (the same, behind a delegating wrapper of another class)}. Rank 0 writes
OUT_DIR/<name>/metrics.jsonl (the Trainer's) and OUT_DIR/<name>/seen.json: whether the trainer
ran loss parallelism and a pipeline, and how the LM head handed out its logits on every rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.distributed import setup_distributed, teardown_distributed  # noqa: E402
from lmforge.distributed.config import ParallelConfig  # noqa: E402
from lmforge.fileio import atomic_write_json  # noqa: E402


def main() -> None:
    import torch

    out, layouts = Path(sys.argv[1]), json.loads(sys.argv[2])
    for lay in layouts:
        pcfg = ParallelConfig(**lay["parallel"])
        ctx = setup_distributed(pcfg, "cpu")
        trainer, placements = dist_common.sft_trainer(out / lay["name"], pcfg, ctx, lay["objective"])
        trainer.fit()
        every_rank: list[list[str]] = [[] for _ in range(ctx.world_size)]
        torch.distributed.all_gather_object(every_rank, placements)
        if ctx.is_main:
            atomic_write_json(out / lay["name"] / "seen.json", {
                "loss_parallel": trainer.loss_parallel,
                "pipeline": trainer.pipeline is not None,
                "logits": sorted({p for rank in every_rank for p in rank}),
            })
    teardown_distributed()


if __name__ == "__main__":
    main()
