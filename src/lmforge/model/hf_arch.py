"""Hugging Face's Llama-family classes in lmforge's terms, both ways: config.json and tensor names.

LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM compute one graph,
lmforge's llama arch (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU), and differ only
in options ModelConfig has:

  llama    Llama 2 / 3.x: RoPE scaling `llama3` (Llama 3.1+) -> model.rope_scaling
  mistral  a sliding attention window: within a context no longer than the window, attention is
           full, so an import caps max_seq_len at the window and export writes no window
  qwen2    biases on q/k/v (not on the output projection) -> model.attn_bias
  qwen3    RMSNorm of each query and key head over head_dim before RoPE -> model.qk_norm, and a
           head width of its own -> model.head_dim

`model.hf_family` remembers the class, so export(import(x)) writes x's class again.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig, RopeScaling, export_family

FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# Our per-layer tensor names -> transformers' (the same in every family; weights map one to one).
LAYER_TENSORS = (
    ("attn.wq.weight", "self_attn.q_proj.weight"),
    ("attn.wk.weight", "self_attn.k_proj.weight"),
    ("attn.wv.weight", "self_attn.v_proj.weight"),
    ("attn.wo.weight", "self_attn.o_proj.weight"),
    ("mlp.w1.weight", "mlp.gate_proj.weight"),
    ("mlp.w3.weight", "mlp.up_proj.weight"),
    ("mlp.w2.weight", "mlp.down_proj.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    ("mlp_norm.weight", "post_attention_layernorm.weight"),
)
QKV_BIASES = tuple(
    (f"attn.{o}.bias", f"self_attn.{t}_proj.bias") for o, t in (("wq", "q"), ("wk", "k"), ("wv", "v"))
)
QK_NORMS = (
    ("attn.q_norm.weight", "self_attn.q_norm.weight"),
    ("attn.k_norm.weight", "self_attn.k_norm.weight"),
)


def layer_tensors(cfg: ModelConfig) -> tuple[tuple[str, str], ...]:
    """(our name, transformers' name) of every tensor of one block, for the options `cfg` sets."""
    return LAYER_TENSORS + (QKV_BIASES if cfg.attn_bias else ()) + (QK_NORMS if cfg.qk_norm else ())


def family_config(cfg: ModelConfig) -> dict[str, Any]:
    """The family-specific part of config.json for a llama-arch ModelConfig (`export_family`'s class)."""
    family = export_family(cfg)
    rs = cfg.rope_scaling
    rope: dict[str, Any] = {"rope_type": rs.type or "default", "rope_theta": cfg.rope_theta}
    if rs.type == "llama3":
        rope.update(
            factor=rs.factor,
            low_freq_factor=rs.low_freq_factor,
            high_freq_factor=rs.high_freq_factor,
            original_max_position_embeddings=rs.original_max_seq_len,
        )
    out: dict[str, Any] = {
        "architectures": [FAMILIES[family]],
        "model_type": family,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4.x
        "rope_parameters": rope,  # 5.x
        "rope_scaling": rope if rs.type else None,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
    }
    if family in ("llama", "mistral", "qwen3"):
        out["attention_bias"] = False
    if family == "llama":
        out.update(mlp_bias=False, pretraining_tp=1)
    else:
        out.update(sliding_window=None, use_sliding_window=False)
    return out


def config_from_family(hf: dict, source: str, max_seq_len: int | None) -> ModelConfig:
    """A Llama / Mistral / Qwen2 / Qwen3 config.json -> ModelConfig; what lmforge lacks is refused."""
    family = hf.get("model_type")

    def need(key: str):
        if key not in hf:
            raise LmforgeError(f"{source}: missing key {key!r} for model_type {family!r}")
        return hf[key]

    def refuse(what: str):
        raise LmforgeError(f"{source}: {what} is not supported by lmforge's transformer")

    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type not in ("default", "llama3"):
        refuse(f"rope scaling {rope_type!r}")
    if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        refuse("partial rotary embeddings")
    if hf.get("attention_bias") and family != "qwen2":
        refuse("attention biases on the output projection")
    if hf.get("mlp_bias"):
        refuse("MLP biases")
    if hf.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {hf['hidden_act']!r}")
    context = int(hf.get("max_position_embeddings", 2048))
    window = _attention_window(hf, family)
    if window and max_seq_len and max_seq_len > window:
        refuse(f"a context of {max_seq_len} beyond the sliding attention window of {window}")
    scaling = RopeScaling()
    if rope_type == "llama3":
        scaling = RopeScaling(
            type="llama3",
            factor=float(rope["factor"]),
            low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            original_max_seq_len=int(rope.get("original_max_position_embeddings", 8192)),
        )
    n_head = need("num_attention_heads")
    return ModelConfig(
        arch="llama",
        vocab_size=need("vocab_size"),
        n_layer=need("num_hidden_layers"),
        d_model=need("hidden_size"),
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        head_dim=hf.get("head_dim") or 0,
        d_ff=need("intermediate_size"),
        max_seq_len=max_seq_len or min(context, window or context),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
        attn_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        hf_family=family,
    )


def _attention_window(hf: dict, family: str) -> int | None:
    """The sliding attention window in effect, if any (Mistral's `sliding_window`; Qwen's only with
    `use_sliding_window`)."""
    window = hf.get("sliding_window")
    if family in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
        return None
    return int(window) if window else None
