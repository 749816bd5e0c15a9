"""FSDP2 peak memory per GPU for a preset, measured, against `lmforge plan`'s estimate.

Builds the preset on the meta device, applies lmforge.distributed's FSDP2 plan (fully_shard per
block + root, bf16 parameters / fp32 reductions), materialises and initialises the shards, and
trains `--steps` steps of AdamW on random tokens at --micro-batch x --seq-len. Prints
`torch.cuda.max_memory_allocated()` on every rank next to the plan's per-device estimate (the
same quantity: the CUDA context and the allocator's reserve are not in either).

One GPU (FSDP over a 1-rank mesh):
  python benchmarks/fsdp_memory.py --preset 1b --micro-batch 2 --seq-len 2048
N GPUs:
  torchrun --nproc-per-node N benchmarks/fsdp_memory.py --preset 1b --micro-batch 2 --seq-len 2048
Check the script without a GPU:
  python benchmarks/fsdp_memory.py --cpu-smoke --preset tiny --micro-batch 2 --seq-len 64 --vocab-size 512
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ac", action="store_true", help="full activation checkpointing")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="check the script on CPU (gloo; no memory figures)"
    )
    args = ap.parse_args()

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh

    from lmforge.distributed import apply_ac, apply_fsdp
    from lmforge.model.config import num_params
    from lmforge.model.transformer import Transformer
    from lmforge.plan import GIB, Layout, estimate_memory, preset_config

    cuda = not args.cpu_smoke
    if cuda and not torch.cuda.is_available():
        raise SystemExit("needs CUDA GPUs (or --cpu-smoke to check the script on CPU)")
    for key, default in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29533"),
    ):
        os.environ.setdefault(key, default)
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("dp_shard",))

    cfg = preset_config(args.preset, args.vocab_size)
    with torch.device("meta"):
        model = Transformer(cfg)
    if args.ac:
        apply_ac(model)
    apply_fsdp(model, mesh, mixed_precision=True)
    model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator(device=device).manual_seed(rank)
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
    peak = torch.tensor(
        [torch.cuda.max_memory_allocated(device) if cuda else 0], device=device, dtype=torch.float64
    )
    peaks = [torch.zeros_like(peak) for _ in range(world)]
    dist.all_gather(peaks, peak)
    est = estimate_memory(
        cfg,
        Layout(dp_shard=world),
        args.micro_batch,
        args.seq_len,
        activation_checkpointing=args.ac,
        fsdp=True,
    )
    if rank == 0:
        measured = [float(p) / GIB for p in peaks]
        print(
            f"{args.preset}: {num_params(cfg) / 1e9:.3f}B parameters, FSDP over {world} "
            f"{torch.cuda.get_device_name(device) if cuda else 'CPU (smoke run)'}, "
            f"micro-batch {args.micro_batch} x seq {args.seq_len}, "
            f"AC {'full' if args.ac else 'off'}, {dt * 1000:.0f} ms/step"
        )
        print("plan estimate per device (GiB): " + ", ".join(f"{n} {v / GIB:.2f}" for n, v in est.rows()))
        print("measured peak allocated per device (GiB): " + ", ".join(f"{m:.2f}" for m in measured))
        if cuda:
            print(f"measured / estimate: {max(measured) / (est.total / GIB):.3f}")
        print(
            "RESULT "
            + json.dumps(
                {
                    "preset": args.preset,
                    "world": world,
                    "measured_gib": measured,
                    "estimate_gib": est.total / GIB,
                    "ms_per_step": dt * 1000,
                }
            )
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
