"""Plan a training run before renting GPUs: per-device memory and compute-optimal size.

Memory: for a model (a --preset, or a RECIPE's model section with overrides) and a parallel
layout, the per-device bytes of parameters, gradients, AdamW state, FSDP buffers, activations
at --micro-batch x --seq-len and logits (bf16 compute, fp32 master weights; see lmforge.plan).
Compute: for a budget (--flops, or --gpu-hours at --mfu of the --gpu's bf16 peak), the
Chinchilla-optimal parameters and tokens (C = 6ND, D = 20N) and the nearest preset.

examples:
  lmforge plan --preset 1b --dp-shard 8 --micro-batch 2 --seq-len 2048
  lmforge plan --preset 8b --dp-shard 4 --tp 2 --ac --gpu-memory 80
  lmforge plan --gpu-hours 1000 --gpu H100 --mfu 0.4
  lmforge plan --flops 1e21
  lmforge plan recipes/shakespeare.yaml --parallel.dp_shard 2 --vocab-size 4096
"""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", nargs="?", default=None, help="recipe whose model/parallel/train sections to plan"
    )
    p.add_argument(
        "--preset", default="", help="model preset (tiny, mini, small, 124m, 350m, 1b, 3b, 8b, 70b)"
    )
    p.add_argument(
        "--arch",
        default="llama",
        choices=["llama", "gpt2"],
        help="architecture with --preset (default llama)",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=0,
        help="vocabulary size (default: the recipe's tokenizer's, else 32768)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=0,
        help="sequence length (default: train.seq_len or the preset's context)",
    )
    p.add_argument(
        "--micro-batch",
        type=int,
        default=0,
        help="sequences per device per forward (default: train.micro_batch, or 1)",
    )
    for name in ("dp-replicate", "dp-shard", "tp", "pp"):
        p.add_argument(
            f"--{name}",
            type=int,
            default=0,
            help=f"parallel degree (default: parallel.{name.replace('-', '_')} or 1)",
        )
    p.add_argument(
        "--pp-microbatches",
        type=int,
        default=0,
        help="pipeline microbatches (default: parallel.pp_microbatches)",
    )
    p.add_argument("--ac", action="store_true", help="full activation checkpointing (default off)")
    p.add_argument(
        "--cpu-offload",
        action="store_true",
        help="FSDP2 CPU offload: params, grads, optimizer in host memory (default: parallel.cpu_offload)",
    )
    p.add_argument(
        "--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="compute dtype (default bf16)"
    )
    p.add_argument(
        "--gpu-memory", type=float, default=0.0, help="GiB per device, to say whether it fits (default: none)"
    )
    p.add_argument("--flops", type=float, default=0.0, help="compute budget in FLOPs (default: none)")
    p.add_argument("--gpu-hours", type=float, default=0.0, help="compute budget in GPU-hours (default: none)")
    p.add_argument("--gpu", default="H100", help="GPU whose bf16 peak converts GPU-hours (default H100)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    p.add_argument(
        "--tokens-per-param",
        type=float,
        default=20.0,
        help="compute-optimal tokens per parameter (default 20)",
    )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    import dataclasses

    from lmforge.errors import LmforgeError
    from lmforge.plan import (
        Layout,
        budget_flops,
        compute_optimal,
        estimate_memory,
        format_compute,
        format_memory,
        preset_config,
    )
    from lmforge.recipe import load_recipe

    budget = args.flops > 0 or args.gpu_hours > 0
    if args.recipe or overrides or not budget or args.preset:
        recipe = load_recipe(args.recipe, overrides)
        vocab = (
            args.vocab_size
            or recipe.model.vocab_size
            or (recipe.tokenizer.vocab_size if args.recipe else 32768)
        )
        if args.preset:
            try:
                cfg = preset_config(args.preset, vocab, args.arch)
            except ValueError as e:
                raise LmforgeError(f"--preset: {e}") from None
        else:
            cfg = dataclasses.replace(recipe.model, vocab_size=vocab)
        try:
            cfg.validate()
        except ValueError as e:
            raise LmforgeError(f"model: {e}") from None
        par = recipe.parallel
        layout = Layout(
            dp_replicate=args.dp_replicate or par.dp_replicate,
            dp_shard=args.dp_shard or par.dp_shard,
            tp=args.tp or par.tp,
            pp=args.pp or par.pp,
            pp_microbatches=args.pp_microbatches or par.pp_microbatches,
            pp_schedule=par.pp_schedule,
            loss_parallel=par.loss_parallel,
            cpu_offload=args.cpu_offload or par.cpu_offload,
            reshard_after_forward=par.reshard_after_forward,
        )
        from_recipe = bool(args.recipe) and not args.preset
        seq = args.seq_len or (recipe.train.seq_len if from_recipe else cfg.max_seq_len)
        mb = args.micro_batch or (recipe.train.micro_batch if from_recipe else 1)
        ac = args.ac or (recipe.train.activation_checkpointing if from_recipe else False)
        est = estimate_memory(cfg, layout, mb, seq, compute_dtype=args.dtype, activation_checkpointing=ac)
        print(format_memory(cfg, layout, est, mb, seq, args.gpu_memory))
    if budget:
        from lmforge.train.metrics import PEAK_FLOPS

        key = next(
            (k for k in sorted(PEAK_FLOPS, key=len, reverse=True) if k.lower() == args.gpu.lower()), None
        )
        if key is None and args.gpu_hours > 0:
            raise LmforgeError(f"--gpu {args.gpu!r}: unknown GPU (known: {', '.join(PEAK_FLOPS)})")
        peak = PEAK_FLOPS[key] if key else 0.0
        flops = budget_flops(args.flops, args.gpu_hours, args.mfu, peak)
        plan = compute_optimal(flops, args.vocab_size or 32768, args.tokens_per_param)
        hours = flops / (args.mfu * peak) / 3600 if peak else None
        print(format_compute(plan, hours if not args.gpu_hours else None))
    return 0
