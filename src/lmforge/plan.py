"""The planner: per-device training memory for a model and layout, and compute-optimal sizing.

Memory (bytes per device, what `torch.cuda.max_memory_allocated` measures; the CUDA context,
NCCL buffers and allocator fragmentation come on top):

- parameters, gradients, optimizer: fp32 master weights, fp32 gradients and AdamW's two fp32
  moments (4 + 4 + 8 bytes per parameter) for this device's share: the largest pipeline stage,
  split over tp (norms are replicated), then over dp_shard (FSDP; dp_replicate copies).
- FSDP buffers: two blocks' parameters gathered in the compute dtype at a time (the one running
  and the one prefetched) plus their unsharded gradients before the reduce-scatter.
- FSDP root: the root group (embeddings, final norm, head) stays gathered from forward to the end
  of backward (FSDP2 does not reshard the root after forward), with its unsharded fp32 gradients:
  for a large vocabulary it outweighs a block (the 1b preset: 134M parameters against 61M).
- activations: what autograd keeps per token and layer with fused (flash) attention, in the
  compute dtype: the norm inputs and outputs, q/k/v, the attention output and the MLP's hidden
  tensors, about 2·(8·d + 2·d_kv + 4·d_ff) bytes for SwiGLU blocks, divided by tp
  (sequence parallel shards the rest); with full activation checkpointing only each block's
  input (2·d) plus one block's working set (the exact per-arch count is in
  `activation_bytes_per_token_layer`). Plus the logits: bf16 logits, their fp32 upcast and
  gradient (10 bytes per vocabulary entry and token) on the last stage, divided by tp under loss
  parallelism (the logits stay sharded over the vocabulary). Pipeline stages keep
  min(pp, microbatches) microbatches in flight under 1F1B, all of them under GPipe.

Compute-optimal sizing (Chinchilla, Hoffmann et al. 2022): C = 6·N·D and D ≈ 20·N, so
N = sqrt(C / 120) and D = 20·N; the nearest preset (by log distance of parameter counts) is
reported with the tokens the budget buys for it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lmforge.errors import LmforgeError
from lmforge.model.config import PRESETS, ModelConfig, flops_per_token, num_params

GIB = 1024**3
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}


@dataclass
class Layout:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    pp_microbatches: int = 4
    pp_schedule: str = "1f1b"
    loss_parallel: bool = True  # under tp > 1: the logits stay vocab-sharded (parallel.loss_parallel)
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy: params, grads and optimizer state in host memory
    reshard_after_forward: bool = True  # false (ZeRO-2): every block stays gathered from forward to backward

    @property
    def world(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.pp


@dataclass
class MemoryEstimate:
    params: float
    grads: float
    optimizer: float
    fsdp_buffers: float
    activations: float
    logits: float
    host: float = 0.0  # offloaded to host memory (parallel.cpu_offload); not part of the device total
    fsdp_root: float = 0.0  # FSDP's root group (embeddings, norm, head) gathered, with its gradients

    @property
    def total(self) -> float:
        return (
            self.params + self.grads + self.optimizer + self.fsdp_buffers + self.fsdp_root
            + self.activations + self.logits
        )

    def rows(self) -> list[tuple[str, float]]:
        device = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "host"]
        return device + [("total", self.total)] + ([("host (offload)", self.host)] if self.host else [])


def _block_params(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters of one transformer block, of which replicated under TP: norms)."""
    no_emb = dataclasses.replace(cfg, preset="", depth=0, n_layer=1)  # preset/depth would re-size it
    one = num_params(no_emb, include_embedding=False) - (
        0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    )
    final_norm = cfg.d_model if cfg.arch == "llama" else 2 * cfg.d_model
    norms = 2 * final_norm
    return one - final_norm, norms


def stage_params(cfg: ModelConfig, layout: Layout) -> tuple[float, bool]:
    """(parameters on the largest pipeline stage per tensor-parallel rank, is that stage the last)."""
    block, block_norms = _block_params(cfg)
    emb = cfg.vocab_size * cfg.d_model + (cfg.max_seq_len * cfg.d_model if cfg.arch == "gpt2" else 0)
    head = 0 if (cfg.tie_embeddings and layout.pp == 1) else cfg.vocab_size * cfg.d_model
    final_norm = cfg.d_model if cfg.arch == "llama" else 2 * cfg.d_model
    tp = layout.tp
    per_block = (block - block_norms) / tp + block_norms
    layers = [n for _, n in _stage_sizes(cfg.n_layer, layout.pp)]
    stages = []
    for i, n in enumerate(layers):
        p = n * per_block
        if i == 0:
            p += emb / tp
        if i == len(layers) - 1:
            p += head / tp + final_norm
        stages.append(p)
    worst = max(range(len(stages)), key=lambda i: (stages[i], i))
    return stages[worst], worst == len(stages) - 1


def root_params(cfg: ModelConfig, layout: Layout) -> float:
    """Parameters of FSDP's root group on the stage that holds the most of them, per tp rank: the
    embeddings (first stage), the final norm and an untied head (last stage)."""
    emb = cfg.vocab_size * cfg.d_model + (cfg.max_seq_len * cfg.d_model if cfg.arch == "gpt2" else 0)
    head = 0 if (cfg.tie_embeddings and layout.pp == 1) else cfg.vocab_size * cfg.d_model
    final_norm = cfg.d_model if cfg.arch == "llama" else 2 * cfg.d_model
    if layout.pp == 1:
        return (emb + head) / layout.tp + final_norm
    return max(emb / layout.tp, head / layout.tp + final_norm)


def _stage_sizes(n_layer: int, pp: int) -> list[tuple[int, int]]:
    base, extra = divmod(n_layer, pp)
    out, start = [], 0
    for r in range(pp):
        n = base + (1 if r < extra else 0)
        out.append((start, n))
        start += n
    return out


def layers_here_of(cfg: ModelConfig, layout: Layout) -> int:
    """The most transformer blocks any pipeline stage holds."""
    return max(n for _, n in _stage_sizes(cfg.n_layer, layout.pp))


def activation_bytes_per_token_layer(cfg: ModelConfig, compute_bytes: int = 2) -> float:
    """Bytes autograd saves per token in one block when everything runs in one dtype (as under
    FSDP's bf16 parameters): checked against `saved_tensors_hooks` in tests/test_plan.py."""
    kv = cfg.n_kv_head * cfg.head_dim
    d, f = cfg.d_model, cfg.d_ff
    if cfg.arch == "llama":
        # two RMSNorms (input, normalised, scaled: 3d each), k/v + q (d + 2kv), attention output,
        # SwiGLU gate, up, silu(gate) and their product (4f), rotary cos/sin (2 head_dim)
        elems = 8 * d + 2 * kv + 4 * f + 2 * cfg.head_dim
    else:
        # two LayerNorms (input, output), q/k/v, attention output, GELU input and output
        elems = 6 * d + 2 * kv + 2 * f
    return compute_bytes * elems


def estimate_memory(
    cfg: ModelConfig,
    layout: Layout,
    micro_batch: int,
    seq_len: int,
    *,
    compute_dtype: str = "bf16",
    activation_checkpointing: bool = False,
    fsdp: bool | None = None,
) -> MemoryEstimate:
    """Per-device training memory in bytes (see the module docstring for the model).
    `fsdp` (default: dp_shard > 1) counts FSDP's gather buffers, e.g. for FSDP on one device."""
    if cfg.vocab_size <= 0:
        raise LmforgeError("model.vocab_size must be set to plan memory (e.g. --vocab-size 32768)")
    if layout.pp > cfg.n_layer:
        raise LmforgeError(f"pipeline degree {layout.pp} exceeds model.n_layer ({cfg.n_layer})")
    for name in ("n_head", "n_kv_head", "d_ff"):
        if getattr(cfg, name) % layout.tp:
            raise LmforgeError(
                f"tensor parallel degree {layout.tp} must divide model.{name} ({getattr(cfg, name)})"
            )
    cb = DTYPE_BYTES[compute_dtype]
    n_dev, last = stage_params(cfg, layout)
    shard = n_dev / layout.dp_shard
    block, norms = _block_params(cfg)
    block_tp = (block - norms) / layout.tp + norms
    if fsdp is None:
        fsdp = layout.dp_shard > 1
    buffers = 0.0
    if fsdp and not layout.reshard_after_forward:  # ZeRO-2: this stage's blocks all stay gathered
        buffers = layers_here_of(cfg, layout) * block_tp * cb + block_tp * 4
    elif fsdp:
        buffers = 2 * block_tp * cb + block_tp * 4  # 2 gathered blocks + one block's unsharded fp32 grads
    elif cb != 4:
        buffers = 2 * block_tp * cb  # autocast's low-precision weight copies of the running block
    root = root_params(cfg, layout) * (cb + 4) if fsdp else 0.0
    layers_here = layers_here_of(cfg, layout)
    if layout.pp > 1:
        n_mb = layout.pp_microbatches
        in_flight = n_mb if layout.pp_schedule == "gpipe" else min(layout.pp, n_mb)
        tokens = micro_batch / n_mb * in_flight * seq_len
    else:
        tokens = micro_batch * seq_len
    per_layer = activation_bytes_per_token_layer(cfg, cb) / layout.tp
    if activation_checkpointing:
        acts = tokens * (layers_here * cb * cfg.d_model / layout.tp + per_layer)
    else:
        acts = tokens * layers_here * per_layer
    logit_tokens = micro_batch * seq_len if layout.pp == 1 else micro_batch / layout.pp_microbatches * seq_len
    vocab_here = cfg.vocab_size / layout.tp if layout.loss_parallel else cfg.vocab_size
    logits = logit_tokens * vocab_here * (cb + 4 + 4) if last else 0.0
    if layout.cpu_offload:
        if not fsdp:
            raise LmforgeError("cpu_offload offloads FSDP2 shards: it needs dp_shard > 1")
        return MemoryEstimate(
            params=0.0,
            grads=0.0,
            optimizer=0.0,
            fsdp_buffers=buffers,
            fsdp_root=root,
            activations=acts,
            logits=logits,
            host=16 * shard,
        )
    return MemoryEstimate(
        params=4 * shard,
        grads=4 * shard,
        optimizer=8 * shard,
        fsdp_buffers=buffers,
        fsdp_root=root,
        activations=acts,
        logits=logits,
    )


# ---------------------------------------------------------------------------- compute-optimal


@dataclass
class ComputePlan:
    flops: float
    params: float  # compute-optimal N
    tokens: float  # compute-optimal D
    preset: str
    preset_params: int
    preset_tokens: float  # what the budget buys for the preset (6·N·D)
    preset_tokens_exact: float  # with lmforge's FLOPs per token (attention included)


def budget_flops(flops: float = 0.0, gpu_hours: float = 0.0, mfu: float = 0.4, peak: float = 989e12) -> float:
    """A compute budget in FLOPs: given directly, or GPU-hours x MFU x peak FLOP/s."""
    if flops > 0:
        return flops
    if gpu_hours > 0:
        if not 0 < mfu <= 1:
            raise LmforgeError(f"--mfu must be in (0, 1], got {mfu}")
        return gpu_hours * 3600 * mfu * peak
    raise LmforgeError("give a compute budget: --flops C or --gpu-hours H (with --mfu and --gpu)")


def preset_config(name: str, vocab_size: int, arch: str = "llama") -> ModelConfig:
    cfg = ModelConfig(arch=arch, preset=name, vocab_size=vocab_size, tie_embeddings=False)
    cfg.max_seq_len = PRESETS[name][5]
    return cfg


def compute_optimal(flops: float, vocab_size: int = 32768, tokens_per_param: float = 20.0) -> ComputePlan:
    """Chinchilla-optimal N and D for `flops` (C = 6ND, D = tokens_per_param·N) and the nearest preset."""
    n = math.sqrt(flops / (6 * tokens_per_param))
    best = min(PRESETS, key=lambda p: abs(math.log(num_params(preset_config(p, vocab_size)) / n)))
    cfg = preset_config(best, vocab_size)
    n_p = num_params(cfg)
    return ComputePlan(
        flops=flops,
        params=n,
        tokens=tokens_per_param * n,
        preset=best,
        preset_params=n_p,
        preset_tokens=flops / (6 * n_p),
        preset_tokens_exact=flops / flops_per_token(cfg, cfg.max_seq_len),
    )


# ---------------------------------------------------------------------------- report


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def format_memory(
    cfg: ModelConfig,
    layout: Layout,
    est: MemoryEstimate,
    micro_batch: int,
    seq_len: int,
    gpu_memory_gib: float = 0.0,
) -> str:
    lines = [
        f"model: {cfg.arch}, {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads "
        f"({cfg.n_kv_head} kv), d_ff {cfg.d_ff}, vocab {cfg.vocab_size}: {human(num_params(cfg))} parameters",
        f"layout: dp_replicate {layout.dp_replicate} x dp_shard {layout.dp_shard} x tp {layout.tp} x pp "
        f"{layout.pp} = {layout.world} devices; micro-batch {micro_batch} x seq {seq_len}",
        "per-device memory (GiB):",
    ]
    for name, value in est.rows():
        lines.append(f"  {name:<13} {value / GIB:9.2f}")
    if gpu_memory_gib > 0:
        verdict = "fits" if est.total / GIB <= gpu_memory_gib else "does NOT fit"
        lines.append(
            f"  -> {verdict} in {gpu_memory_gib:g} GiB (add ~1 GiB for the CUDA context and fragmentation)"
        )
    return "\n".join(lines)


def format_compute(plan: ComputePlan, gpu_hours_per_device: float | None = None) -> str:
    lines = [
        f"compute budget: {plan.flops:.3g} FLOPs",
        f"compute-optimal (C = 6ND, D = 20N): N = {human(plan.params)} parameters, "
        f"D = {human(plan.tokens)} tokens",
        f"nearest preset: {plan.preset} ({human(plan.preset_params)} parameters): the budget buys "
        f"{human(plan.preset_tokens)} tokens by 6ND "
        f"({plan.preset_tokens / plan.preset_params:.1f} tokens/param), "
        f"{human(plan.preset_tokens_exact)} counting attention FLOPs at its context length",
    ]
    if gpu_hours_per_device is not None:
        lines.append(f"time: {gpu_hours_per_device:,.1f} GPU-hours")
    return "\n".join(lines)
