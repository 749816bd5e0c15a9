"""FSDP2 peak memory per rank for a preset, measured, against `lmforge plan`'s estimate.

Builds the model the way every training stage does (`build_parallel_model`: the meta device, the
FSDP2 plan over every rank, then only this rank's shards materialised and initialised) and trains
`--steps` steps of AdamW on random tokens at --micro-batch x --seq-len. Prints each rank's peak
next to the plan's per-device estimate:

- on GPUs (default): `torch.cuda.max_memory_allocated()`, bf16 compute (the CUDA context and the
  allocator's reserve are in neither figure);
- with --device cpu (gloo, fp32 compute, `lmforge plan --dtype fp32`): the process's peak RSS
  (the kernel's high-water mark, getrusage), with the runtime's own RSS before the build
  (psutil) reported beside it, and the peak RSS reached while building, which shows that no
  rank ever held the full model.

N GPUs:
  torchrun --nproc-per-node N benchmarks/fsdp_memory.py --preset 1b --micro-batch 2 --seq-len 2048
4 CPU ranks (what tests/test_fsdp_memory.py runs; ~0.5B parameters fit a 24 GB machine):
  torchrun --nproc-per-node 4 benchmarks/fsdp_memory.py --device cpu --preset 1b --n-layer 8 \\
      --micro-batch 1 --seq-len 64 --steps 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--n-layer", type=int, default=0, help="override the preset's depth (default: keep)")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ac", action="store_true", help="full activation checkpointing")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()

    import psutil
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from lmforge.distributed import ParallelConfig, build_parallel_model, setup_distributed
    from lmforge.model.config import num_params
    from lmforge.plan import GIB, Layout, estimate_memory, preset_config

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("needs CUDA GPUs (or --device cpu)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    pcfg = ParallelConfig(dp_shard=world)
    ctx = setup_distributed(pcfg, args.device)
    device = ctx.device

    cfg = preset_config(args.preset, args.vocab_size)
    if args.n_layer:
        cfg = dataclasses.replace(cfg, preset="", n_layer=args.n_layer)
    runtime_rss = psutil.Process().memory_info().rss
    model = build_parallel_model(cfg, pcfg, ctx, seed=0, activation_checkpointing=args.ac)
    build_peak = peak_rss_bytes()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator(device=device).manual_seed(ctx.rank)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        x = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq_len + 1), device=device, generator=g)
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / args.steps
    mine = [torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes(), build_peak, runtime_rss]
    peaks = [mine]
    if world > 1:
        peaks = [None] * world
        dist.all_gather_object(peaks, mine)
    est = estimate_memory(
        cfg,
        Layout(dp_shard=world),
        args.micro_batch,
        args.seq_len,
        compute_dtype="bf16" if cuda else "fp32",
        activation_checkpointing=args.ac,
    )
    if ctx.is_main:
        what = "peak allocated" if cuda else "peak RSS"
        where = torch.cuda.get_device_name(device) if cuda else "CPU ranks (gloo, fp32)"
        print(
            f"{args.preset} (n_layer {cfg.n_layer}): {num_params(cfg) / 1e9:.3f}B parameters, FSDP over "
            f"{world} {where}, micro-batch {args.micro_batch} x seq {args.seq_len}, "
            f"AC {'full' if args.ac else 'off'}, {dt * 1000:.0f} ms/step"
        )
        print("plan estimate per device (GiB): " + ", ".join(f"{n} {v / GIB:.2f}" for n, v in est.rows()))
        print(f"measured {what} per device (GiB): " + ", ".join(f"{p[0] / GIB:.2f}" for p in peaks))
        if not cuda:
            print("peak RSS while building (GiB): " + ", ".join(f"{p[1] / GIB:.2f}" for p in peaks))
            print("runtime RSS before building (GiB): " + ", ".join(f"{p[2] / GIB:.2f}" for p in peaks))
        print(f"measured / estimate: {max(p[0] for p in peaks) / est.total:.3f}")
        result = {
            "preset": args.preset,
            "n_layer": cfg.n_layer,
            "params": num_params(cfg),
            "world": world,
            "device": args.device,
            "measured_gib": [p[0] / GIB for p in peaks],
            "build_peak_gib": [p[1] / GIB for p in peaks],
            "runtime_gib": [p[2] / GIB for p in peaks],
            "estimate_gib": est.total / GIB,
            "ms_per_step": dt * 1000,
        }
        print("RESULT " + json.dumps(result), flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
