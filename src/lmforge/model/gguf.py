"""GGUF export for llama.cpp (through the `gguf` package), with the tokenizer in the metadata.

What llama.cpp's `convert_hf_to_gguf.py` does for a Llama checkpoint, from our model directly:
  * tensors under llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output);
  * Q and K projection rows permuted from HF's rotate-half RoPE layout back to the interleaved
    pairs llama.cpp's rope kernel expects (`LlamaModel.permute`);
  * 1-D tensors (norms, biases) and GPT-2's position embeddings always F32; the other matrices in
    the file's type: F32 (default), F16, BF16 or any type the installed `gguf` package can quantise
    (`gguf_types()`: Q8_0, Q4_0, ... with gguf.quants' own quantisers). A matrix whose rows do not
    split into the type's blocks falls back to F16, as `convert_hf_to_gguf.py` does;
  * tokenizer: model "gpt2" (byte-level BPE), tokens and merges in HF's byte-level spelling,
    token types (specials are CONTROL), bos/eos ids, the chat template and a pre-tokenizer name.
GPT-2 models export to llama.cpp's `gpt2` architecture (fused QKV, learned positions).

llama.cpp does not run our split regex; it picks its own by the `tokenizer.ggml.pre` name.
Our gpt4 pattern (also cl100k's) is the split of llama.cpp's "llama-bpe"; gpt2's is "gpt-2".
Other patterns (nanochat's 1-2 digit groups, custom regexes) have no llama.cpp equivalent:
the file is written with "llama-bpe" and a warning, and llama.cpp may split digits differently.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write
from lmforge.model.config import ModelConfig, check_exportable

log = logging.getLogger("lmforge.export")

PRE_TOKENIZER = {"gpt4": "llama-bpe", "cl100k": "llama-bpe", "gpt2": "gpt-2"}


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half rows -> llama.cpp interleaved rows (convert_hf_to_gguf's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `permute_rope` (used by the tests to read a GGUF back into our layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our parameters under llama.cpp's tensor names, in llama.cpp's layouts."""
    cfg: ModelConfig = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {"token_embd.weight": sd["tok_emb.weight"]}
    if cfg.arch == "llama":
        for i in range(cfg.n_layer):
            p, q = f"layers.{i}.", f"blk.{i}."
            out[q + "attn_norm.weight"] = sd[p + "attn_norm.weight"]
            out[q + "attn_q.weight"] = permute_rope(sd[p + "attn.wq.weight"], cfg.n_head)
            out[q + "attn_k.weight"] = permute_rope(sd[p + "attn.wk.weight"], cfg.n_kv_head)
            out[q + "attn_v.weight"] = sd[p + "attn.wv.weight"]
            out[q + "attn_output.weight"] = sd[p + "attn.wo.weight"]
            out[q + "ffn_norm.weight"] = sd[p + "mlp_norm.weight"]
            out[q + "ffn_gate.weight"] = sd[p + "mlp.w1.weight"]
            out[q + "ffn_up.weight"] = sd[p + "mlp.w3.weight"]
            out[q + "ffn_down.weight"] = sd[p + "mlp.w2.weight"]
        out["output_norm.weight"] = sd["norm.weight"]
    elif cfg.arch == "gpt2":
        out["position_embd.weight"] = sd["pos_emb.weight"]
        for i in range(cfg.n_layer):
            p, q = f"layers.{i}.", f"blk.{i}."
            for kind in ("weight", "bias"):
                out[q + f"attn_norm.{kind}"] = sd[p + f"attn_norm.{kind}"]
                qkv = [sd[p + f"attn.{w}.{kind}"] for w in ("wq", "wk", "wv")]
                out[q + f"attn_qkv.{kind}"] = torch.cat(qkv)
                out[q + f"attn_output.{kind}"] = sd[p + f"attn.wo.{kind}"]
                out[q + f"ffn_norm.{kind}"] = sd[p + f"mlp_norm.{kind}"]
                out[q + f"ffn_up.{kind}"] = sd[p + f"mlp.fc.{kind}"]
                out[q + f"ffn_down.{kind}"] = sd[p + f"mlp.proj.{kind}"]
            if cfg.n_kv_head != cfg.n_head:
                raise LmforgeError("llama.cpp's gpt2 architecture has no grouped-query attention")
        out["output_norm.weight"] = sd["norm.weight"]
        out["output_norm.bias"] = sd["norm.bias"]
    else:
        raise LmforgeError(f"cannot export arch {cfg.arch!r} to GGUF (llama or gpt2)")
    if not cfg.tie_embeddings:  # llama.cpp falls back to token_embd when output is absent
        out["output.weight"] = sd["lm_head.weight"]
    return out


@functools.cache
def gguf_types() -> dict[str, object]:
    """{"f32": GGMLQuantizationType.F32, "q8_0": ...}: the types the installed `gguf` package writes.

    Found by asking `gguf.quants.quantize` to quantise one block of zeros: newer gguf versions
    implement more quantisers, and a type it cannot write raises NotImplementedError."""
    import gguf

    types = {}
    for qtype in gguf.GGMLQuantizationType:
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        file_type = "ALL_F32" if qtype.name == "F32" else f"MOSTLY_{qtype.name}"
        if file_type not in gguf.LlamaFileType.__members__:
            continue  # not a whole-file type (integer tensors, ...)
        try:
            gguf.quants.quantize(np.zeros((1, max(block, 256)), dtype=np.float32), qtype)
        except (NotImplementedError, gguf.quants.QuantError):
            continue
        types[qtype.name.lower()] = qtype
    return types


def _file_type(qtype):
    import gguf

    return gguf.LlamaFileType["ALL_F32" if qtype.name == "F32" else f"MOSTLY_{qtype.name}"]


KEEP_F32 = ("position_embd.weight",)  # llama.cpp's converter keeps position embeddings in F32 too


def _encode(name: str, arr: np.ndarray, qtype):
    """(data, type) of one tensor as the file stores it."""
    import gguf

    if arr.ndim == 1 or name in KEEP_F32 or qtype == gguf.GGMLQuantizationType.F32:
        return arr, gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if arr.shape[-1] % block:
        log.warning("%s: rows of %d do not split into %s blocks of %d; writing it as F16",
                    name, arr.shape[-1], qtype.name, block)
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(arr, qtype), qtype


def export_gguf(
    model: torch.nn.Module,
    tokenizer,
    out_path: str | os.PathLike,
    dtype: str = "f32",
    name: str = "lmforge",
    force: bool = False,
    chat: bool = False,
) -> Path:
    """Write `model` + `tokenizer` as one GGUF file (atomically). dtype: the matrices' type, one of
    `gguf_types()` (f32, f16, bf16, q8_0, q4_0, ...). An existing file is replaced only with `force`;
    a directory is never a GGUF path. An Ollama Modelfile is written beside it (`write_modelfile`;
    `chat`: the model answers conversations, as after SFT)."""
    import gguf

    from lmforge.tokenizer.tokenizer import hf_files

    qtype = gguf_types().get(dtype.lower())
    if qtype is None:
        raise LmforgeError(
            f"GGUF dtype {dtype!r} is not one the installed gguf package {gguf_version()} can write; "
            f"choose one of: {', '.join(gguf_types())}"
        )
    cfg: ModelConfig = model.cfg
    check_exportable(cfg, "GGUF")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise LmforgeError(
            f"{out_path} is a directory; the GGUF output is a file, e.g. {out_path / 'model.gguf'}"
        )
    for path in (out_path, modelfile_path(out_path)):
        if path.exists() and not force:
            raise LmforgeError(f"{path} exists; pass --force to overwrite it")
    arch = {"llama": "llama", "gpt2": "gpt2"}.get(cfg.arch)
    if arch is None:
        raise LmforgeError(f"cannot export arch {cfg.arch!r} to GGUF (llama or gpt2)")
    w = gguf.GGUFWriter(None, arch)
    w.add_name(name)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_head)
    w.add_file_type(_file_type(qtype))
    if cfg.arch == "llama":
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
    else:
        w.add_layer_norm_eps(cfg.norm_eps)
    _add_tokenizer(w, tokenizer, cfg.vocab_size, hf_files(tokenizer)["tokenizer.json"])
    from tqdm import tqdm

    nbytes = 0
    tensors = gguf_tensors(model)
    for tname, t in tqdm(tensors.items(), total=len(tensors), desc=f"quantise ({dtype})", unit="tensor",
                         mininterval=0.5, leave=False):
        data, data_type = _encode(tname, np.ascontiguousarray(t.numpy()), qtype)
        w.add_tensor(tname, data, raw_dtype=data_type)
        nbytes += data.nbytes
    with atomic_write(out_path, "wb") as f:
        # Hand the writer our temp file (its documented "already open" state) so the publish is atomic.
        w.fout, w.state = [f], gguf.WriterState.EMPTY
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=nbytes > 256 * 2**20)  # a progress bar for big models
        w.fout = None
    write_modelfile(out_path, tokenizer, cfg.max_seq_len, chat)
    return out_path


def modelfile_path(gguf_path: Path) -> Path:
    return gguf_path.with_suffix(".Modelfile")


def write_modelfile(gguf_path: Path, tokenizer, context: int, chat: bool) -> Path:
    """`ollama create NAME -f X.Modelfile`: the GGUF beside it, lmforge's prompt format and stops.

    A chat model gets the chat template in Ollama's Go syntax (the same ids as `render_chat`); a
    base model gets a text prompt after <|eos|>, as `lmforge generate` feeds it."""
    from lmforge.fileio import atomic_write_text
    from lmforge.tokenizer.tokenizer import END, EOS

    if chat and "<|assistant|>" in tokenizer.special_ids:
        template = (
            "<|bos|>{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{- end }}<|assistant|>"
        )
    else:
        template = f"{EOS}{{{{ .Prompt }}}}"
    lines = [f"FROM ./{gguf_path.name}", f'TEMPLATE """{template}"""', f"PARAMETER num_ctx {context}"]
    lines += [f'PARAMETER stop "{s}"' for s in (EOS, END) if s in tokenizer.special_ids]
    path = modelfile_path(gguf_path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(version unknown)"


def _add_tokenizer(w, tokenizer, n_vocab: int, tokenizer_json: dict) -> None:
    import gguf

    model = tokenizer_json["model"]
    tokens: list[str] = [""] * n_vocab
    types = [gguf.TokenType.USER_DEFINED] * n_vocab
    for piece, i in model["vocab"].items():
        tokens[i], types[i] = piece, gguf.TokenType.NORMAL
    for t in tokenizer_json["added_tokens"]:
        tokens[t["id"]], types[t["id"]] = t["content"], gguf.TokenType.CONTROL
    for i in range(tokenizer.vocab_size, n_vocab):  # rows beyond the tokenizer (padding)
        tokens[i] = f"[PAD{i}]"
    pre = PRE_TOKENIZER.get(tokenizer.pattern_name or "")
    if pre is None:
        log.warning(
            "llama.cpp has no pre-tokenizer for split pattern %s; writing 'llama-bpe' "
            "(digits may split differently)",
            tokenizer.pattern_name or "custom",
        )
        pre = "llama-bpe"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in model["merges"]])
    if tokenizer.bos_id is not None:
        w.add_bos_token_id(tokenizer.bos_id)
    if tokenizer.eos_id is not None:
        w.add_eos_token_id(tokenizer.eos_id)
        w.add_pad_token_id(tokenizer.eos_id)
    end = tokenizer.special_ids.get("<|end|>")
    if end is not None:
        w.add_eot_token_id(end)  # llama.cpp stops chat turns at the end-of-turn token
    w.add_add_bos_token(False)  # text prompts start after <|eos|> in pretraining, not after <|bos|>
    w.add_add_eos_token(False)
    if "<|assistant|>" in tokenizer.special_ids:
        w.add_chat_template(tokenizer.chat_template_jinja)
