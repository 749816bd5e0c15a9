"""Data-parallel throughput on CPU: 2 gloo processes (DDP, FSDP2) vs 1 process, same global batch.

The model is the Shakespeare recipe's (6 layers, width 256, 8 heads, vocab 4096), fp32, AdamW,
global batch 16 x 256 tokens per optimizer step. The single process trains the whole batch; under
DDP / FSDP each of the 2 ranks trains half of it (lmforge.distributed: `replicate` / `fully_shard`
per block + root), launched with torchrun. Every run is a child process of this one; the figure is
global tokens/s over the timed steps (after `--warmup` untimed ones). Threads: the 2-process runs
use 1 thread per rank; the single process is measured with 1 and with 2 threads, so the ratio
against 2 threads is "same cores", the one against 1 thread is "same threads per process".

CPU is not the target of data parallelism (gloo all-reduce through shared memory and sockets,
2 cores shared with other jobs): the point is an honest record, not a speed claim.

usage:
  .venv/bin/python benchmarks/distributed.py [--steps 12 --warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ARCH = dict(n_layer=6, d_model=256, n_head=8, vocab=4096, seq=256, batch=16)


def worker(layout: str, steps: int, warmup: int) -> None:
    import torch
    import torch.nn.functional as F

    from lmforge.distributed import clip_grad_norm_, parallelize, setup_distributed
    from lmforge.distributed.config import ParallelConfig
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    pcfg = ParallelConfig(dp_shard=world) if layout == "fsdp" else ParallelConfig(dp_replicate=world)
    ctx = setup_distributed(pcfg, "cpu")
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=ARCH["n_layer"],
        d_model=ARCH["d_model"],
        n_head=ARCH["n_head"],
        vocab_size=ARCH["vocab"],
        max_seq_len=ARCH["seq"],
    )
    model = parallelize(Transformer(cfg), pcfg, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows = ARCH["batch"] // ctx.dp_size
    g = torch.Generator().manual_seed(ctx.dp_rank)
    times = []
    for step in range(steps):
        x = torch.randint(0, ARCH["vocab"], (rows, ARCH["seq"] + 1), generator=g)
        t0 = time.perf_counter()
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ctx.distributed:
            torch.distributed.barrier()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    if ctx.is_main:
        tps = ARCH["batch"] * ARCH["seq"] * len(times) / sum(times)
        print("RESULT " + json.dumps({"tokens_per_s": tps, "ms_per_step": 1000 * sum(times) / len(times)}))
    if ctx.distributed:
        torch.distributed.destroy_process_group()


def run(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.warmup)
        return
    me = [__file__, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    single = [sys.executable, *me, "--worker", "ddp"]
    results = {
        "1 process, 1 thread": run(single, 1),
        "1 process, 2 threads": run(single, 2),
    }
    for layout in ("ddp", "fsdp"):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            *me,
            "--worker",
            layout,
        ]
        results[f"2 processes {layout.upper()}, 1 thread each"] = run(cmd, 1)
    print(f"model {ARCH}, fp32, global batch {ARCH['batch']} x {ARCH['seq']} tokens, {os.cpu_count()} CPUs")
    for name, r in results.items():
        print(f"  {name:<34} {r['tokens_per_s']:9.0f} tokens/s  {r['ms_per_step']:8.1f} ms/step")
    for layout in ("DDP", "FSDP"):
        r = results[f"2 processes {layout}, 1 thread each"]["tokens_per_s"]
        print(
            f"  {layout}: x{r / results['1 process, 2 threads']['tokens_per_s']:.2f} "
            "vs 1 process with 2 threads, "
            f"x{r / results['1 process, 1 thread']['tokens_per_s']:.2f} vs 1 process with 1 thread"
        )


if __name__ == "__main__":
    main()
