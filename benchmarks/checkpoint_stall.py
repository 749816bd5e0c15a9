"""Training stall per checkpoint save, synchronous DCP vs DCP async save, under FSDP.

Builds a preset on the meta device, shards it with lmforge.distributed's FSDP2 plan over every
rank, materialises only the local shards, trains a step of AdamW (so the optimizer state
exists), then saves `--saves` checkpoints through the trainer's CheckpointManager, once with
`async_save` off and once on, with a training step after each save. Per save it reports:

  stall_s     how long the save call blocks the training loop (sync: the whole write; async: the
              copy of the state to CPU memory and rank 0's small files)
  step_s      the training step that follows (async: it runs while the shards are written)
  publish_s   async only: the wait at the next save for the background write to finish

CPU, 4 gloo ranks (what the CPU box can run):
  torchrun --standalone --nproc-per-node 4 benchmarks/checkpoint_stall.py --preset 124m --out /tmp/stall
GPUs: the same line with --nproc-per-node N (the state is staged from GPU to CPU memory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path


class _Position:
    """The loader stand-in the CheckpointManager saves the state of."""

    def state_dict(self) -> dict:
        return {"position": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--saves", type=int, default=3)
    ap.add_argument("--out", default="/tmp/lmforge-checkpoint-stall")
    args = ap.parse_args()

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from lmforge.checkpoint.manager import CheckpointManager
    from lmforge.distributed import parallelize, setup_distributed
    from lmforge.distributed.config import ParallelConfig
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    pcfg = ParallelConfig(dp_shard=world)
    ctx = setup_distributed(pcfg, device)
    cfg = ModelConfig(preset=args.preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len)
    with torch.device("meta"):
        model = Transformer(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    model = parallelize(model, pcfg, ctx)
    model.to_empty(device=ctx.device)
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.normal_(0.0, 0.02)
        if getattr(model, "inv_freq", None) is not None:
            hd = cfg.head_dim
            model.inv_freq.copy_(1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=ctx.device) / hd)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(ctx.dp_rank)
    x = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq_len + 1), generator=g).to(ctx.device)

    def step() -> float:
        t0 = time.perf_counter()
        logits = model(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    plain_step = min(step() for _ in range(2))
    out = Path(args.out)
    results: dict[str, dict] = {}
    for mode in ("sync", "async"):
        run_dir = out / mode
        if ctx.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)
        dist.barrier()
        manager = CheckpointManager(
            run_dir, model=model, raw_model=model, optimizer=optimizer, loader=_Position(), tokenizer=None,
            stage="bench", config_hash="", keep_last=1, device=torch.device(ctx.device), distributed=True,
            is_main=ctx.is_main, async_save=mode == "async", say=lambda _: None,
        )
        stalls, steps, publishes = [], [], []
        for i in range(args.saves):
            dist.barrier()
            t0 = time.perf_counter()
            manager.save(i + 1, {})
            stalls.append(time.perf_counter() - t0)
            steps.append(step())
            t0 = time.perf_counter()
            manager.wait()
            publishes.append(time.perf_counter() - t0)
        row = {"stall_s": stalls, "step_s": steps}
        if mode == "async":
            row["publish_s"] = publishes
        results[mode] = row
        if ctx.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)
    if ctx.is_main:
        size = {k: v for k, v in vars(args).items() if k != "out"}
        print(json.dumps({"params": n_params, "ranks": world, "device": device, **size,
                          "plain_step_s": round(plain_step, 3), "results": results}))
        for mode, row in results.items():
            publish = row.get("publish_s")
            print(f"{mode:5s}: stall per save {statistics.median(row['stall_s']):.2f} s (median of "
                  f"{len(row['stall_s'])}), next step {statistics.median(row['step_s']):.2f} s "
                  f"(plain step {plain_step:.2f} s)"
                  + (f", wait to publish {statistics.median(publish):.2f} s" if publish else ""))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
