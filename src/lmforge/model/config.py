"""ModelConfig, the preset table and the size arithmetic (parameters, FLOPs per token).

Torch-free on purpose: `lmforge plan` and `--help` use it without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from lmforge.errors import LmforgeError

# name: (n_layer, d_model, n_head, n_kv_head, d_ff, max_seq_len, lr, batch_tokens)
PRESETS: dict[str, tuple[int, int, int, int, int, int, float, int]] = {
    "tiny": (4, 128, 4, 4, 384, 256, 3e-3, 16_384),
    "mini": (6, 256, 8, 8, 768, 256, 2e-3, 32_768),
    "small": (8, 512, 8, 8, 1536, 1024, 1e-3, 131_072),
    "124m": (12, 768, 12, 12, 2048, 1024, 6e-4, 524_288),
    "350m": (24, 1024, 16, 16, 2816, 2048, 3e-4, 524_288),
    "1b": (16, 2048, 32, 8, 8192, 2048, 3e-4, 1_048_576),
    "3b": (28, 3072, 24, 8, 8192, 4096, 3e-4, 2_097_152),
    "8b": (32, 4096, 32, 8, 14336, 8192, 3e-4, 4_194_304),
    "70b": (80, 8192, 64, 8, 28672, 8192, 1.5e-4, 16_777_216),
}


@dataclass
class RopeScaling:
    """Llama 3.1's RoPE frequency scaling (`type: llama3`): wavelengths longer than
    original_max_seq_len / low_freq_factor are divided by `factor`, those shorter than
    original_max_seq_len / high_freq_factor are kept, and the band between is interpolated."""

    type: Literal["", "llama3"] = ""  # "": plain RoPE; llama3: Llama 3.1+'s scaling
    factor: float = 8.0  # how much longer the context is than the one RoPE was trained at
    low_freq_factor: float = 1.0  # wavelengths above original_max_seq_len / this are scaled fully
    high_freq_factor: float = 4.0  # wavelengths below original_max_seq_len / this are not scaled
    original_max_seq_len: int = 8192  # the context before scaling (original_max_position_embeddings)


@dataclass
class ModelConfig:
    """A decoder-only transformer. `arch: llama` (RMSNorm, RoPE, SwiGLU, no biases) or
    `arch: gpt2` (LayerNorm, learned positions, GELU, biases).

    Size it one of three ways: a `preset` name from PRESETS (sets n_layer, d_model, n_head,
    n_kv_head, d_ff; the context stays `max_seq_len`), a `depth` (d_model = 64·depth, heads of
    64 dims; the nanochat dial), or the individual fields. `vocab_size: 0` means
    "take it from the tokenizer"; `n_kv_head: 0` means n_head (no GQA); `d_ff: 0` derives
    the MLP width (SwiGLU 8/3·d rounded to 64; GELU and ReLU² 4·d).

    Learning-efficiency options (docs/training.md), all off by default:
    `qk_norm` RMS-normalises queries and keys per head before RoPE (as Qwen3 / modded-nanogpt);
    `mlp` picks the MLP ("" = the arch's own: swiglu for llama, gelu for gpt2; relu2 is
    proj(relu(fc(x))²)); `logit_softcap` > 0 squashes logits to cap·tanh(logits / cap);
    `zero_init_proj` starts every residual output projection (attention out, MLP down) at zero;
    `value_embeds` N gives the first ceil(N/2) and last floor(N/2) layers a token-embedding table
    of their own whose lookup is added to the attention values (modded-nanogpt, nanochat).

    Options of the Hugging Face families `lmforge import` takes, also off by default: `attn_bias`
    (biases on the query, key and value projections, Qwen2), an explicit `head_dim` (Qwen3),
    `rope_scaling` (Llama 3.1+), and `hf_family`, the transformers class `lmforge export` writes.
    """

    # llama (RMSNorm, RoPE, SwiGLU) or gpt2 (LayerNorm, learned positions, GELU)
    arch: Literal["llama", "gpt2"] = "llama"
    preset: str = ""  # a size from the preset table (lmforge plan --help); sets the shape fields
    depth: int = 0  # nanochat's dial: d_model = 64 x depth, n_layer = depth (0: off)
    vocab_size: int = 0  # 0: the tokenizer's
    n_layer: int = 6  # transformer blocks
    d_model: int = 256  # hidden size
    n_head: int = 8  # attention heads (query heads)
    n_kv_head: int = 0  # key/value heads for grouped-query attention (0: n_head)
    head_dim: int = 0  # width of one attention head (0: d_model / n_head)
    d_ff: int = 0  # MLP width (0: SwiGLU 8/3 x d_model rounded to 64, GELU / ReLU² 4 x d_model)
    max_seq_len: int = 256  # longest context, in tokens
    rope_theta: float = 10000.0  # RoPE base frequency
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)  # Llama 3.1+ long-context RoPE
    norm_eps: float = 1e-5  # epsilon of RMSNorm / LayerNorm
    tie_embeddings: bool = True  # the LM head shares the token embedding's weights
    dropout: float = 0.0  # dropout probability on attention and residual outputs
    init_std: float = 0.02  # std of the normal weight initialisation
    qk_norm: bool = False  # RMS-normalise queries and keys per head before RoPE
    attn_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    # "": the arch's own (swiglu for llama, gelu for gpt2); relu2: proj(relu(fc(x))²)
    mlp: Literal["", "swiglu", "relu2", "gelu"] = ""
    logit_softcap: float = 0.0  # > 0: logits become cap x tanh(logits / cap)
    zero_init_proj: bool = False  # start every residual output projection at zero
    value_embeds: int = 0  # layers (first and last) whose attention values add a token embedding
    # the transformers class export writes ("": Qwen3 with qk_norm, Qwen2 with attn_bias, else Llama)
    hf_family: Literal["", "llama", "mistral", "qwen2", "qwen3"] = ""
    extra: dict = field(default_factory=dict)  # free-form keys carried into the checkpoint's config.json

    def __post_init__(self) -> None:
        if self.preset:
            if self.preset not in PRESETS:
                import difflib

                close = difflib.get_close_matches(self.preset, list(PRESETS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown preset {self.preset!r}{hint} (presets: {', '.join(PRESETS)})")
            if not self.mlp:
                self.mlp = "swiglu" if self.arch == "llama" else "gelu"
            n_layer, d_model, n_head, n_kv, d_ff, _, _, _ = PRESETS[self.preset]
            self.n_layer, self.d_model, self.n_head, self.n_kv_head = n_layer, d_model, n_head, n_kv
            # the table's width is SwiGLU's; GELU and ReLU² MLPs take GPT-2's 4·d (3072 for 124m)
            self.d_ff = d_ff if self.mlp == "swiglu" else 4 * d_model
        elif self.depth > 0:
            self.n_layer = self.depth
            self.d_model = 64 * self.depth
            self.n_head = max(1, self.d_model // 64)
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.head_dim == 0 and self.n_head > 0 and self.d_model % self.n_head == 0:
            self.head_dim = self.d_model // self.n_head
        if not self.mlp:
            self.mlp = "swiglu" if self.arch == "llama" else "gelu"
        if self.d_ff == 0:
            if self.mlp == "swiglu":
                self.d_ff = 64 * math.ceil(8 * self.d_model / 3 / 64)
            else:
                self.d_ff = 4 * self.d_model

    def validate(self) -> None:
        if self.head_dim <= 0:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by n_head {self.n_head} (or set model.head_dim)"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        for name in ("n_layer", "d_model", "n_head", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.logit_softcap < 0:
            raise ValueError("logit_softcap must be >= 0 (0: off)")
        if not 0 <= self.value_embeds <= self.n_layer:
            raise ValueError(
                f"value_embeds must be in [0, n_layer = {self.n_layer}] (got {self.value_embeds})"
            )
        rs = self.rope_scaling
        if rs.type and not (rs.factor >= 1 and 0 < rs.low_freq_factor < rs.high_freq_factor):
            raise ValueError("rope_scaling needs factor >= 1 and 0 < low_freq_factor < high_freq_factor")


def preset_training(name: str) -> tuple[float, int]:
    """(learning rate, batch tokens) of a preset, for recipes that do not set their own."""
    _, _, _, _, _, _, lr, batch_tokens = PRESETS[name]
    return lr, batch_tokens


def value_embed_layers(cfg: ModelConfig) -> list[int]:
    """The layers with a value embedding: the first ceil(N/2) and the last floor(N/2) of them."""
    n, L = cfg.value_embeds, cfg.n_layer
    return list(range(n - n // 2)) + list(range(L - n // 2, L))


def num_params(cfg: ModelConfig, include_embedding: bool = True) -> int:
    """Exact parameter count of `Transformer(cfg)` (vocab_size must be set). Without embeddings
    it leaves out the lookups: token, position and value embeddings (their tables and gains)."""
    d, L, V, hd = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.head_dim
    bias = cfg.arch == "gpt2"
    attn = d * (cfg.n_head * hd) + 2 * d * (cfg.n_kv_head * hd) + (cfg.n_head * hd) * d
    if bias or cfg.attn_bias:
        attn += cfg.n_head * hd + 2 * cfg.n_kv_head * hd
    if bias:
        attn += d
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.d_ff
    if bias and cfg.mlp != "swiglu":
        mlp += cfg.d_ff + d
    norms = 2 * d if cfg.arch == "llama" else 4 * d
    if cfg.qk_norm:
        norms += 2 * hd
    total = L * (attn + mlp + norms) + (d if cfg.arch == "llama" else 2 * d)
    if include_embedding:
        total += V * d + cfg.value_embeds * (V * cfg.n_kv_head * hd + 1)
        if not cfg.tie_embeddings:
            total += V * d
        if cfg.arch == "gpt2":
            total += cfg.max_seq_len * d
    elif not cfg.tie_embeddings:
        total += V * d  # the LM head is a matmul, counted as compute
    return total


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6·N (non-embedding params + LM head) + 12·L·H·Q·T attention term."""
    T = seq_len or cfg.max_seq_len
    n = num_params(cfg, include_embedding=False)
    if cfg.tie_embeddings:
        n += cfg.vocab_size * cfg.d_model  # tied head still costs a matmul
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T


def export_family(cfg: ModelConfig) -> str:
    """The Hugging Face family a llama-arch model exports as: `hf_family`, else the one its options need."""
    return cfg.hf_family or ("qwen3" if cfg.qk_norm else "qwen2" if cfg.attn_bias else "llama")


# What each family's transformers class has beyond Llama's graph (Qwen3's attention_bias also
# biases the output projection, which lmforge's attn_bias does not).
FAMILY_OPTIONS = {"llama": set(), "mistral": set(), "qwen2": {"attn_bias"}, "qwen3": {"qk_norm"}}


def check_exportable(cfg: ModelConfig, target: str) -> None:
    """Raise LmforgeError naming every set option of `cfg` the `target` format cannot express, so an
    exported model never silently computes something else. Hugging Face takes the llama-arch options
    of the family `export_family` picks (QK-norm as Qwen3, q/k/v biases as Qwen2, RoPE scaling and
    head_dim everywhere); llama.cpp's llama and GPT-2 graphs take none of them."""
    found = []
    hf_llama = target == "Hugging Face" and cfg.arch == "llama"
    family = export_family(cfg) if hf_llama else cfg.arch
    allowed = FAMILY_OPTIONS.get(family, set())
    for option in ("qk_norm", "attn_bias"):
        if getattr(cfg, option) and option not in allowed:
            found.append(f"model.{option}")
    if not hf_llama:
        if cfg.rope_scaling.type:
            found.append(f"model.rope_scaling: {cfg.rope_scaling.type}")
        if cfg.head_dim * cfg.n_head != cfg.d_model:
            found.append(f"model.head_dim: {cfg.head_dim} (not d_model / n_head)")
    default_mlp = "swiglu" if cfg.arch == "llama" else "gelu"
    if cfg.mlp != default_mlp:
        found.append(f"model.mlp: {cfg.mlp} (its {cfg.arch} graph has {default_mlp})")
    if cfg.logit_softcap > 0:
        found.append("model.logit_softcap")
    if cfg.value_embeds:
        found.append("model.value_embeds")
    if found:
        raise LmforgeError(
            f"cannot export to {target}: the model uses {', '.join(found)}, which {target}'s {family} "
            "architecture does not have"
        )
