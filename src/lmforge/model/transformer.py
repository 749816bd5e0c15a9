"""The decoder-only transformer, readable end to end.

Two families from one config (`ModelConfig.arch`):
  llama: token embedding -> [RMSNorm -> attention (RoPE, grouped-query KV heads) -> +residual
         -> RMSNorm -> SwiGLU MLP -> +residual] x n_layer -> RMSNorm -> LM head. No biases.
  gpt2:  token + learned position embeddings, LayerNorm, GELU MLP, biases everywhere.
The llama family's imported variants are options of the same graph: q/k/v biases (Qwen2), QK-norm
and a head width of its own (Qwen3), Llama 3.1's RoPE frequency scaling. Value embeddings
(`value_embeds`, modded-nanogpt) give some layers a token-embedding table of their own, looked up
from the input tokens and added, times a learned per-layer gain, to that layer's attention values.

Attention goes through `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU),
or through flex_attention when the mask given is a BlockMask (document masking, lmforge.model.flex).
Rotary embeddings use the "rotate half" layout of Hugging Face's Llama, so exported weights load
there unchanged. Layers live in a ModuleDict keyed "0".."L-1" and the embedding, final norm and
head may be None: pipeline parallelism (lmforge.distributed) deletes the parts a stage does not own
and the remaining names (and so checkpoints) stay stable. Parallel plans, losses, the training loop
and the checkpoint format live elsewhere; this file only computes logits.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from lmforge.model.config import ModelConfig, value_embed_layers
from lmforge.model.flex import flex_attend


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped outright when it is a no-op (p = 0 is the usual pretraining setting)."""
    return F.dropout(x, p, training) if p > 0 and training else x


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "llama":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """RoPE's inverse frequencies theta^(-2i/d) [head_dim / 2], with Llama 3.1's scaling when
    `cfg.rope_scaling.type` is llama3: low frequencies (long wavelengths) are divided by `factor`,
    high ones kept, and the band between interpolated smoothly (transformers' llama3 rope)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    rs = cfg.rope_scaling
    if rs.type != "llama3":
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = rs.original_max_seq_len / rs.low_freq_factor
    high_freq_wavelen = rs.original_max_seq_len / rs.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq)
    band = rs.high_freq_factor - rs.low_freq_factor
    smooth = (rs.original_max_seq_len / wavelen - rs.low_freq_factor) / band
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos/sin of shape [B, 1, T, head_dim] for integer positions [B, T] (B = 1 when every row
    has the same positions: the rotation then reads one table for the whole batch, not B copies)."""
    freqs = positions[:, :, None].float() * inv_freq[None, None, :].float()
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class LayerKVCache(Protocol):
    """What attention asks of a KV cache; the caches themselves live in lmforge.inference.kv_cache."""

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this chunk's k, v [B, H_kv, T, D] from start_pos on; return the keys and values
        to attend over."""
        ...


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        bias = cfg.arch == "gpt2"
        qkv_bias = bias or cfg.attn_bias
        self.layer, self.n_head, self.n_kv_head, self.head_dim = (
            layer,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim,
        )
        self.dropout = cfg.dropout
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=qkv_bias)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=qkv_bias)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=qkv_bias)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=bias)
        # QK-norm: per-head RMSNorm of queries and keys bounds the attention logits (Qwen3's q_norm/k_norm)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        # the gain of this layer's value embedding (the table itself is the Transformer's)
        self.ve_lambda = nn.Parameter(torch.ones(1)) if layer in value_embed_layers(cfg) else None

    def forward(
        self,
        x,
        rope=None,
        cache: LayerKVCache | None = None,
        start_pos: int = 0,
        attn_mask=None,
        value_embed=None,
    ):
        B, T, _ = x.shape
        # -1 instead of the head count: under tensor parallelism each rank holds a slice of the heads.
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if value_embed is not None:  # [B, T, H_kv·D], a lookup of this chunk's tokens
            ve = self.ve_lambda * value_embed.view(B, T, -1, self.head_dim).transpose(1, 2)
            v = v + ve.to(v.dtype)  # under autocast v is low precision, the table's lookup is not
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(self.layer, k, v, start_pos)
        if isinstance(attn_mask, BlockMask):  # document masking on flex_attention (no dropout there)
            y = flex_attend(q, k, v, attn_mask)
        else:
            S = k.shape[2]
            is_causal = attn_mask is None and T > 1 and S == T
            if attn_mask is None and T > 1 and S > T:  # a chunk appended after cached tokens
                attn_mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=q.shape[1] != k.shape[1],
            )
        y = y.transpose(1, 2).reshape(B, T, -1)
        return dropout(self.wo(y), self.dropout, self.training)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)  # gate
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)  # up
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)  # down
        self.dropout = cfg.dropout

    def forward(self, x):
        return dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)), self.dropout, self.training)


class GeluMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.arch == "gpt2")
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.arch == "gpt2")
        self.dropout = cfg.dropout

    def forward(self, x):
        return dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")), self.dropout, self.training)


class ReLU2MLP(nn.Module):
    """proj(relu(fc(x))²): as cheap as GELU, and learns faster at small scale (modded-nanogpt)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.arch == "gpt2")
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.arch == "gpt2")
        self.dropout = cfg.dropout

    def forward(self, x):
        return dropout(self.proj(F.relu(self.fc(x)).square()), self.dropout, self.training)


MLPS = {"swiglu": SwiGLU, "gelu": GeluMLP, "relu2": ReLU2MLP}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLPS[cfg.mlp](cfg)

    def forward(self, x, rope=None, cache=None, start_pos=0, attn_mask=None, value_embed=None):
        x = x + self.attn(self.attn_norm(x), rope, cache, start_pos, attn_mask, value_embed)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError(
                "ModelConfig.vocab_size must be set (from the tokenizer) before building the model"
            )
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.arch == "gpt2" else None
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.n_layer)})
        kv_width = cfg.n_kv_head * cfg.head_dim
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(cfg.vocab_size, kv_width) for i in value_embed_layers(cfg)}
        )
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.arch == "llama":
            self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        else:
            self.inv_freq = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2·n_layer)
        so the residual stream's variance stays flat with depth (GPT-2), or zero with
        `zero_init_proj` (each block starts as the identity; modded-nanogpt); norms one, biases zero."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scaled = name.endswith(("attn.wo", "mlp.w2", "mlp.proj"))
                if scaled and self.cfg.zero_init_proj:
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.normal_(
                        module.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layer) if scaled else std
                    )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Attention) and module.ve_lambda is not None:
                nn.init.ones_(module.ve_lambda)
        if self.inv_freq is not None:
            self.inv_freq.copy_(rope_inv_freq(self.cfg))

    def forward(
        self,
        idx: torch.Tensor,
        cache: LayerKVCache | None = None,
        start_pos: int = 0,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | BlockMask | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T] (or the hidden states, with return_hidden).

        `cache`/`start_pos` continue a sequence whose first start_pos tokens are cached.
        `positions` [B, T] and a boolean `attn_mask` [B, 1, T, S] (True = attend) serve batches
        of left-padded prompts and packed rows; a flex_attention BlockMask serves document masking.
        Under pipeline parallelism `idx` is the previous stage's output.
        """
        T = idx.shape[1]
        if positions is None:  # [1, T]: the rotary tables and position embeddings broadcast over the batch
            positions = torch.arange(start_pos, start_pos + T, device=idx.device)[None]
        h = self.tok_emb(idx) if self.tok_emb is not None else idx
        if self.pos_emb is not None:
            h = h + self.pos_emb(positions)
        h = dropout(h, self.cfg.dropout, self.training)
        rope = rope_cos_sin(self.inv_freq, positions, h.dtype) if self.inv_freq is not None else None
        value_embeds = {i: emb(idx) for i, emb in self.value_embeds.items()}
        for i, block in self.layers.items():
            h = block(h, rope, cache, start_pos, attn_mask, value_embeds.get(i))
        if self.norm is not None:
            h = self.norm(h)
        if return_hidden or self.lm_head is None:
            return h
        return self.logits(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on final hidden states (what callers that keep only some positions use)."""
        logits = self.lm_head(h)
        if self.cfg.logit_softcap > 0:  # cap·tanh(z / cap): bounded logits, no runaway confidence (Gemma 2)
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def num_params(self, include_embedding: bool = True) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (not include_embedding and is_embedding(name)):
                continue
            seen.add(id(p))
            total += p.numel()
        return total


def is_embedding(name: str) -> bool:
    """Whether parameter `name` belongs to a lookup (token, position, value embeddings and the
    value embeddings' gains), which costs no matmul and so counts in neither size nor FLOPs."""
    return name.startswith(("tok_emb", "pos_emb", "value_embeds")) or name.endswith("ve_lambda")
