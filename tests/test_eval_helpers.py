"""Shared helpers for the evaluation tests: a tiny tokenizer and a Hugging Face twin of a model."""

from __future__ import annotations

import functools

TEXT = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
    "Now is the winter of our discontent made glorious summer by this sun of York. "
    "O Romeo, Romeo! wherefore art thou Romeo? Friends, Romans, countrymen, lend me your ears. "
    "Question: Answer: Hamlet Macbeth Othello King Lear The Tempest "
)


@functools.lru_cache(maxsize=1)
def small_tokenizer():
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.train([TEXT * 3], vocab_size=300)


def hf_llama_from(model):
    """transformers.LlamaForCausalLM holding `model`'s weights (the 1:1 name mapping)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.cfg
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head,
            num_key_value_heads=c.n_kv_head,
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_theta=c.rope_theta,
            tie_word_embeddings=c.tie_embeddings,
            bos_token_id=None,
            eos_token_id=None,
        )
    )
    names = {
        "tok_emb": "model.embed_tokens",
        "norm": "model.norm",
        "lm_head": "lm_head",
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.wq": "self_attn.q_proj",
        "attn.wk": "self_attn.k_proj",
        "attn.wv": "self_attn.v_proj",
        "attn.wo": "self_attn.o_proj",
        "mlp.w1": "mlp.gate_proj",
        "mlp.w3": "mlp.up_proj",
        "mlp.w2": "mlp.down_proj",
    }
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("layers."):
            _, n, rest = key.split(".", 2)
            module, leaf = rest.rsplit(".", 1)
            state[f"model.layers.{n}.{names[module]}.{leaf}"] = value
        else:
            module, leaf = key.rsplit(".", 1)
            state[f"{names[module]}.{leaf}"] = value
    hf.load_state_dict(state, strict=False)
    with torch.no_grad():
        missing = [k for k in hf.state_dict() if k not in state and not k.endswith("rotary_emb.inv_freq")]
        assert missing in ([], ["lm_head.weight"]), missing
    return hf.eval()
