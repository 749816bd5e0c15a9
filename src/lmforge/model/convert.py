"""Hugging Face interop: export an lmforge model as a transformers checkpoint, import one back.

Export writes what `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`
load with no custom code: `model.safetensors`, `config.json`, `generation_config.json`, the tokenizer
files of `Tokenizer.save_hf` (tokenizer.json + tokenizer_config.json with the chat template) set up to
behave as lmforge does (`export_tokenizer_files`), an optional model card (README.md), plus
`lmforge-manifest.json` (what the export wrote, so that a later export may replace it).

  arch llama -> LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM
                (`hf_arch`: model.hf_family, else the class the options need). Names map 1:1 and
                our RoPE already uses HF's rotate-half layout, so tensors are copied unchanged.
  arch gpt2  -> GPT2LMHeadModel. GPT-2 stores linear layers as Conv1D ([in, out], the transpose of
                nn.Linear) and fuses q, k, v into one `c_attn`; the mapping transposes and concatenates.

Import (`hf_import.load_hf`) is the inverse, built from the pieces here: config.json is translated
into a ModelConfig (features our transformer does not implement, such as other RoPE scalings, MLP
biases or other activations, are refused with a message), weights are read from safetensors (single
or sharded, every shard inside DIR) or pytorch_model.bin (weights_only) and renamed, and a
byte-level BPE tokenizer.json becomes an lmforge Tokenizer (`tokenizer_from_hf`).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.fileio import (
    atomic_rename_dir,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    owned_temp_dir,
    read_json,
    remove_stale_temps,
    write_manifest,
)
from lmforge.model.config import ModelConfig, check_exportable
from lmforge.model.hf_arch import FAMILIES, LAYER_TENSORS, config_from_family, family_config, layer_tensors

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    if name in (None, "", "auto"):
        return default
    if name not in DTYPES:
        raise LmforgeError(f"unknown dtype {name!r} (expected one of: {', '.join(DTYPES)})")
    return DTYPES[name]


# ---------------------------------------------------------------------------------------------
# state-dict mapping


def to_hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our Transformer's parameters under transformers' names (a tied head is stored once)."""
    cfg: ModelConfig = model.cfg
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if cfg.arch == "llama":
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        for i in range(cfg.n_layer):
            p, q = f"layers.{i}.", f"model.layers.{i}."
            for ours, theirs in layer_tensors(cfg):
                out[q + theirs] = sd[p + ours]
        out["model.norm.weight"] = sd["norm.weight"]
    elif cfg.arch == "gpt2":
        if cfg.n_kv_head != cfg.n_head:
            raise LmforgeError("GPT-2 has no grouped-query attention: n_kv_head must equal n_head to export")
        out["transformer.wte.weight"] = sd["tok_emb.weight"]
        out["transformer.wpe.weight"] = sd["pos_emb.weight"]
        for i in range(cfg.n_layer):
            p, q = f"layers.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[q + theirs + ".weight"] = sd[p + ours + ".weight"]
                out[q + theirs + ".bias"] = sd[p + ours + ".bias"]
            qkv = [p + f"attn.{w}" for w in ("wq", "wk", "wv")]
            out[q + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv], 0).t()
            out[q + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv], 0)
            for ours, theirs in (
                ("attn.wo", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                out[q + theirs + ".weight"] = sd[p + ours + ".weight"].t()
                out[q + theirs + ".bias"] = sd[p + ours + ".bias"]
        out["transformer.ln_f.weight"] = sd["norm.weight"]
        out["transformer.ln_f.bias"] = sd["norm.bias"]
    else:
        raise LmforgeError(f"cannot export arch {cfg.arch!r} to Hugging Face (llama or gpt2)")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(
    hf: dict[str, torch.Tensor], cfg: ModelConfig, source: str = ""
) -> dict[str, torch.Tensor]:
    """transformers' names -> our Transformer's state dict (the inverse of `to_hf_state_dict`)."""
    hf = {k.removeprefix("base_model."): v for k, v in hf.items()}

    def get(name: str) -> torch.Tensor:
        if name not in hf:
            raise LmforgeError(
                f"{source}: weights have no tensor {name!r} (is this a {cfg.arch} checkpoint?)"
            )
        return hf[name]

    sd: dict[str, torch.Tensor] = {}
    if cfg.arch == "llama":
        sd["tok_emb.weight"] = get("model.embed_tokens.weight")
        for i in range(cfg.n_layer):
            p, q = f"layers.{i}.", f"model.layers.{i}."
            for ours, theirs in layer_tensors(cfg):
                sd[p + ours] = get(q + theirs)
        sd["norm.weight"] = get("model.norm.weight")
    else:
        sd["tok_emb.weight"] = get("transformer.wte.weight")
        sd["pos_emb.weight"] = get("transformer.wpe.weight")
        d = cfg.d_model
        for i in range(cfg.n_layer):
            p, q = f"layers.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                sd[p + ours + ".weight"] = get(q + theirs + ".weight")
                sd[p + ours + ".bias"] = get(q + theirs + ".bias")
            w = get(q + "attn.c_attn.weight").t()
            b = get(q + "attn.c_attn.bias")
            for j, name in enumerate(("wq", "wk", "wv")):
                sd[p + f"attn.{name}.weight"] = w[j * d : (j + 1) * d]
                sd[p + f"attn.{name}.bias"] = b[j * d : (j + 1) * d]
            for ours, theirs in (
                ("attn.wo", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                sd[p + ours + ".weight"] = get(q + theirs + ".weight").t()
                sd[p + ours + ".bias"] = get(q + theirs + ".bias")
        sd["norm.weight"] = get("transformer.ln_f.weight")
        sd["norm.bias"] = get("transformer.ln_f.bias")
    sd["lm_head.weight"] = sd["tok_emb.weight"] if cfg.tie_embeddings else get("lm_head.weight")
    return {k: v.contiguous() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------
# config.json


def hf_config(
    cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None, dtype: str = "float32"
) -> dict:
    """The transformers config.json for a ModelConfig."""
    common: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "torch_dtype": dtype,
        "dtype": dtype,
        "use_cache": True,
    }
    if cfg.arch == "llama":
        return {**family_config(cfg), **common}
    if cfg.arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len,
            "n_ctx": cfg.max_seq_len,
            "activation_function": "gelu_new",  # the tanh approximation, as ours
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            **common,
        }
    raise LmforgeError(f"cannot export arch {cfg.arch!r} to Hugging Face (llama or gpt2)")


def model_config_from_hf(
    hf: dict, source: str = "config.json", max_seq_len: int | None = None
) -> ModelConfig:
    """A transformers config.json (the Llama family of `hf_arch`, or GPT-2) -> ModelConfig; features
    lmforge's transformer lacks are refused."""
    model_type = hf.get("model_type")

    def need(key: str):
        if key not in hf:
            raise LmforgeError(f"{source}: missing key {key!r} for model_type {model_type!r}")
        return hf[key]

    def refuse(what: str):
        raise LmforgeError(f"{source}: {what} is not supported by lmforge's transformer")

    if model_type in FAMILIES:
        cfg = config_from_family(hf, source, max_seq_len)
    elif model_type == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            refuse(f"activation_function {hf['activation_function']!r}")
        if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
            refuse("non-standard GPT-2 attention scaling")
        d_model = need("n_embd")
        cfg = ModelConfig(
            arch="gpt2",
            vocab_size=need("vocab_size"),
            n_layer=need("n_layer"),
            d_model=d_model,
            n_head=need("n_head"),
            d_ff=hf.get("n_inner") or 4 * d_model,
            max_seq_len=need("n_positions"),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    else:
        known = ", ".join(repr(t) for t in (*FAMILIES, "gpt2"))
        raise LmforgeError(f"{source}: model_type {model_type!r} is not supported (expected one of {known})")
    try:
        cfg.validate()
    except ValueError as e:
        raise LmforgeError(f"{source}: {e}") from None
    return cfg


# ---------------------------------------------------------------------------------------------
# export


EXPORT_WRITER = "lmforge export"  # the manifest's writer: an HF export may replace only an HF export
ADAPTER_WRITER = "lmforge export (PEFT adapter)"


def export_hf(
    model: torch.nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    dtype: str | None = None,
    force: bool = False,
    card: str | None = None,
) -> Path:
    """Write `model` + `tokenizer` as a Hugging Face checkpoint directory (atomically), with `card`
    (Markdown) as its README.md when given.

    The directory is replaced as a whole, so an existing `out_dir` must be empty or an earlier export
    holding only its own files (its manifest, `fileio.check_replaceable`), unless `force`."""
    import shutil

    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    check_replaceable(out_dir, EXPORT_WRITER, force)
    cfg: ModelConfig = model.cfg
    check_exportable(cfg, "Hugging Face")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise LmforgeError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size}")
    target = _dtype(dtype, next(model.parameters()).dtype)
    from tqdm import tqdm

    hf_tensors = to_hf_state_dict(model)
    bar = tqdm(hf_tensors, desc="export", unit="tensor", disable=None)  # shown on a terminal only
    tensors = {k: hf_tensors[k].to(target).cpu() for k in bar}
    dtype_name = next(k for k, v in DTYPES.items() if v == target)
    bos = getattr(tokenizer, "bos_id", None)
    eos = getattr(tokenizer, "eos_id", None)
    remove_stale_temps(out_dir.parent, out_dir.name)
    tmp = owned_temp_dir(out_dir.parent, out_dir.name)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config(cfg, bos, eos, dtype_name))
        # Greedy unless asked: transformers' pipeline samples (temperature 0.7) when the model says nothing.
        gen = {
            "bos_token_id": bos,
            "eos_token_id": _stop_ids(tokenizer),
            "pad_token_id": eos,
            "do_sample": False,
        }
        atomic_write_json(tmp / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
        if tokenizer is not None:
            for name, obj in export_tokenizer_files(tokenizer, cfg.max_seq_len).items():
                atomic_write_json(tmp / name, obj)
        if card is not None:
            atomic_write_text(tmp / "README.md", card)
        write_manifest(tmp, EXPORT_WRITER)
        atomic_rename_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


GPT2_LINEAR = {"attn.wo": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
QKV = ("attn.wq", "attn.wk", "attn.wv")


def hf_adapter_tensors(
    cfg: ModelConfig, tensors: dict[str, torch.Tensor], modules: list[str], rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """LoRA adapters on lmforge's modules -> (PEFT's tensor names -> tensors, each adapted HF module's
    rank). The llama family's linear layers map one to one (wq -> self_attn.q_proj, w1 ->
    mlp.gate_proj, ...): A and B are copied. GPT-2 fuses q, k, v into one `c_attn`, whose update
    must be [dq; dk; dv] = [Bq Aq; Bk Ak; Bv Av]: one adapter of rank r per adapted part, A the
    parts' A stacked, B block-diagonal (each part's B in its rows and its own r columns)."""
    out: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}

    def put(theirs: str, a: torch.Tensor, b: torch.Tensor) -> None:
        out[f"base_model.model.{theirs}.lora_A.weight"] = a
        out[f"base_model.model.{theirs}.lora_B.weight"] = b
        ranks[theirs] = a.shape[0]

    def lora(module: str, x: str) -> torch.Tensor:
        return tensors[f"{module}.lora_{x}.weight"]

    if cfg.arch == "llama":
        linear = {o.removesuffix(".weight"): t.removesuffix(".weight") for o, t in LAYER_TENSORS}
        for module in modules:
            _, layer, ours = module.split(".", 2)
            if ours not in linear:
                raise LmforgeError(f"{module}: no Hugging Face module to put its adapter on")
            put(f"model.layers.{layer}.{linear[ours]}", lora(module, "A"), lora(module, "B"))
        return out, ranks
    if cfg.arch != "gpt2":
        raise LmforgeError(f"cannot export arch {cfg.arch!r} to Hugging Face (llama or gpt2)")
    fused: dict[str, list[str]] = {}
    for module in modules:
        _, layer, ours = module.split(".", 2)
        if ours in QKV:
            fused.setdefault(layer, []).append(ours)
        elif ours in GPT2_LINEAR:
            put(f"transformer.h.{layer}.{GPT2_LINEAR[ours]}", lora(module, "A"), lora(module, "B"))
        else:
            raise LmforgeError(f"{module}: no Hugging Face module to put its adapter on")
    d = cfg.d_model
    for layer, parts in fused.items():
        parts = [p for p in QKV if p in parts]
        a = torch.cat([lora(f"layers.{layer}.{p}", "A") for p in parts], 0)
        b = torch.zeros(3 * d, rank * len(parts), dtype=a.dtype)
        for j, p in enumerate(parts):
            i = QKV.index(p)
            b[i * d : (i + 1) * d, j * rank : (j + 1) * rank] = lora(f"layers.{layer}.{p}", "B")
        put(f"transformer.h.{layer}.attn.c_attn", a, b)
    return out, ranks


def export_lora_adapter(
    cfg: ModelConfig,
    info: dict,
    tensors: dict[str, torch.Tensor],
    out_dir: str | os.PathLike,
    base_dir: str | os.PathLike,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Write an lmforge adapter checkpoint's LoRA adapters (`info`: its config.json "adapter" entry) as
    a PEFT adapter directory, `adapter_config.json` + `adapter_model.safetensors` under transformers'
    module names, for the Hugging Face export of its base in `base_dir`:
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out_dir)`. Replaced as
    a whole, like an HF export (`fileio.check_replaceable`)."""
    import shutil

    from peft import LoraConfig
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    check_replaceable(out_dir, ADAPTER_WRITER, force)
    rank, alpha = int(info["rank"]), float(info["alpha"])
    hf, ranks = hf_adapter_tensors(cfg, tensors, info["modules"], rank)
    modules = list(ranks)
    # the short names (q_proj, ...) when every layer has the same adapters, else each module's full name
    short = sorted({m.rsplit(".", 1)[-1] for m in modules})
    every_layer = cfg.arch == "llama" and len(modules) == cfg.n_layer * len(short)
    # a fused c_attn's rank is a multiple of r: its alpha grows with it, so the scale stays alpha / r
    other = {m: k for m, k in ranks.items() if k != rank}
    target = _dtype(dtype, next(iter(hf.values())).dtype)
    peft_cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=info["dropout"],
        target_modules=short if every_layer else modules,
        rank_pattern={m.replace(".", r"\."): k for m, k in other.items()},
        alpha_pattern={m.replace(".", r"\."): alpha * k / rank for m, k in other.items()},
        fan_in_fan_out=cfg.arch == "gpt2",  # GPT-2's Conv1D stores [in, out]
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(Path(base_dir).resolve()),
    )
    remove_stale_temps(out_dir.parent, out_dir.name)
    tmp = owned_temp_dir(out_dir.parent, out_dir.name)
    try:
        peft_cfg.save_pretrained(str(tmp))
        tensors_out = {k: v.to(target).contiguous() for k, v in hf.items()}
        save_file(tensors_out, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_manifest(tmp, ADAPTER_WRITER)
        atomic_rename_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_tokenizer_files(tokenizer, context: int) -> dict[str, dict]:
    """`Tokenizer.save_hf`'s files, set up so that transformers encodes, pads and truncates as lmforge:

    * a text prompt starts a document, after <|eos|> (as `Engine.encode_prompt` and the token shards
      have it): tokenizer.json's post-processor adds <|eos|> in front when `add_special_tokens` (the
      default of `tok(text)` and of `pipeline("text-generation")`); chat templates add nothing more;
    * the pad token is <|eos|> (masked out by the attention mask), padding on the left so that a
      padded batch generates as each prompt alone does;
    * `model_max_length` is the model's context, not "unlimited".

    A model's own tokenizer.json that import kept (`HFTokenizer`) goes out as it came in."""
    from lmforge.tokenizer.hf_tokenizer import HFTokenizer
    from lmforge.tokenizer.tokenizer import EOS, hf_files

    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.hf_files()

    files = hf_files(tokenizer)
    config, special_map = files["tokenizer_config.json"], files["special_tokens_map.json"]
    config["model_max_length"] = context
    eos = tokenizer.special_ids.get(EOS)
    if eos is not None:
        files["tokenizer.json"]["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": EOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": EOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOS, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {EOS: {"id": EOS, "ids": [eos], "tokens": [EOS]}},
        }
        config["pad_token"] = special_map["pad_token"] = EOS
        config["padding_side"] = "left"
    return files


def _stop_ids(tokenizer) -> list[int] | None:
    """Ids that end a generation: <|eos|> and the chat turn end <|end|>, when the tokenizer has them."""
    if tokenizer is None:
        return None
    ids = [
        tokenizer.special_ids[s] for s in ("<|eos|>", "<|end|>") if s in getattr(tokenizer, "special_ids", {})
    ]
    return ids or None


# ---------------------------------------------------------------------------------------------
# import


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a local HF checkpoint: model.safetensors, sharded safetensors or pytorch_model.bin."""
    from safetensors.torch import load_file

    single = hf_dir / "model.safetensors"
    index = hf_dir / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        files = [hf_dir / f for f in _shard_names(index)]
    elif (hf_dir / "pytorch_model.bin").exists():
        try:
            return torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise LmforgeError(f"{hf_dir / 'pytorch_model.bin'}: cannot read weights ({e})") from None
    else:
        raise LmforgeError(
            f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
        )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as e:
            raise LmforgeError(f"{f}: cannot read safetensors ({e})") from None
    return out


def _shard_names(index: Path) -> list[str]:
    """The weight files a model.safetensors.index.json names; each must lie inside the model folder
    (no absolute path, no `..`: an index must not make the import read files elsewhere)."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LmforgeError(f"{index}: no 'weight_map' of tensor names to file names")
    names = sorted(set(weight_map.values()))
    for name in names:
        p = PurePosixPath(name)
        if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
            raise LmforgeError(
                f"{index}: weight file {name!r} is outside the model folder; refusing to read it"
            )
    return names


# HF's ByteLevel pre-tokenizer regex (use_regex=true): GPT-2's, with literal contractions.
HF_BYTELEVEL_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tokenizer_from_hf(path: str | os.PathLike):
    """A byte-level BPE tokenizer.json -> (lmforge Tokenizer, hf_ids) with hf_ids[our id] = HF id.

    Supported: model BPE (no dropout, no byte_fallback, no continuing-subword prefix), no
    normalizer, a ByteLevel pre-tokenizer without a prefix space, optionally after one Split regex.
    Special (added) tokens become lmforge special tokens after the merges.
    """
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.tokenizer import bytes_to_unicode

    path = Path(path)
    data = read_json(path)

    def refuse(why: str):
        raise LmforgeError(f"{path}: {why}; lmforge converts byte-level BPE tokenizers only")

    model = data.get("model") or {}
    if model.get("type") != "BPE":
        refuse(f"model type {model.get('type')!r} is not BPE")
    if model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix"):
        refuse("BPE dropout / byte_fallback / continuing_subword_prefix are set")
    if data.get("normalizer"):
        refuse(f"normalizer {data['normalizer'].get('type')!r} is set")
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    splits = [s for s in steps if s.get("type") == "Split"]
    if len(byte_level) != 1 or len(splits) + 1 != len(steps) or len(splits) > 1:
        refuse("the pre-tokenizer is not ByteLevel (optionally after one Split)")
    if byte_level[0].get("add_prefix_space"):
        refuse("the ByteLevel pre-tokenizer adds a prefix space")
    if splits:
        pattern = (splits[0].get("pattern") or {}).get("Regex")
        if not pattern or splits[0].get("behavior") != "Isolated" or splits[0].get("invert"):
            refuse("the Split pre-tokenizer is not an isolated regex split")
        if byte_level[0].get("use_regex", True):
            refuse("both a Split regex and ByteLevel's own regex are applied")
    elif byte_level[0].get("use_regex", True):
        pattern = HF_BYTELEVEL_REGEX
    else:
        refuse("no split regex at all")
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab: dict[str, int] = model.get("vocab") or {}
    try:
        hf_ids = [vocab[chr_] for chr_ in (bytes_to_unicode()[b] for b in range(256))]
    except KeyError:
        refuse("the vocabulary lacks some of the 256 single bytes")
    merges = []
    ours: dict[str, int] = {bytes_to_unicode()[b]: b for b in range(256)}
    for i, m in enumerate(model.get("merges") or []):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        if left not in ours or right not in ours or left + right not in vocab:
            refuse(f"merge {i} ({left!r}, {right!r}) uses or makes a token that is not in the vocabulary")
        if left + right in ours:
            refuse(f"merge {i} makes the token {left + right!r} a second time")
        merges.append((ours[left], ours[right]))
        ours[left + right] = 256 + i
        hf_ids.append(vocab[left + right])
    if any(any(c not in char_to_byte for c in piece) for piece in ours):
        refuse("a vocabulary entry is not in byte-level form")
    added = data.get("added_tokens") or []
    if any(not t.get("special") for t in added):
        refuse("it has non-special added tokens (matched literally by HF, unknown to lmforge's encoder)")
    specials = sorted(added, key=lambda t: t["id"])
    hf_ids += [t["id"] for t in specials]
    tok = Tokenizer(merges, pattern, [t["content"] for t in specials])
    return tok, hf_ids
