"""`load_hf`: a local Hugging Face checkpoint -> (lmforge Transformer, tokenizer, report).

The model side comes from `convert` (config.json, weight files, tensor names; the Llama family of
`hf_arch` and GPT-2). The tokenizer is one of two kinds:

  converted  a byte-level BPE tokenizer.json that lmforge's format holds (`convert.tokenizer_from_hf`)
             and that brings no chat template of its own: it becomes an lmforge Tokenizer, and the
             embedding / LM-head rows are reordered into lmforge's id layout (bytes 0-255, merges,
             specials) so the model computes the same function;
  kept       anything else (SentencePiece, normalizers, other pre-tokenizers, a chat template of the
             model's own): tokenizer.json is kept as-is behind lmforge's interface (`HFTokenizer`),
             and the model keeps its ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.fileio import read_json
from lmforge.model.config import ModelConfig
from lmforge.model.convert import (
    _dtype,
    from_hf_state_dict,
    model_config_from_hf,
    read_hf_weights,
    tokenizer_from_hf,
)


def load_hf(
    hf_dir: str | os.PathLike,
    dtype: str | None = None,
    max_seq_len: int | None = None,
    progress: bool | None = False,
):
    """A local Hugging Face checkpoint -> (Transformer in eval mode, tokenizer or None, report).

    report: arch, hf_family, vocab_size, tokenizer ("converted", "kept" or None), tokenizer_note (why
    it was kept, or why there is none), reordered, hf_ids (our id i is HF id hf_ids[i]). `progress`:
    a bar per tensor (None: on a terminal only)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise LmforgeError(f"{hf_dir}: not a directory")
    cfg = model_config_from_hf(read_json(hf_dir / "config.json"), str(hf_dir / "config.json"), max_seq_len)
    sd = from_hf_state_dict(read_hf_weights(hf_dir), cfg, str(hf_dir))
    rows = sd["tok_emb.weight"].shape[0]
    if rows != cfg.vocab_size:
        raise LmforgeError(
            f"{hf_dir}: embedding has {rows} rows but config.json says vocab_size {cfg.vocab_size}"
        )
    if cfg.arch == "gpt2" and max_seq_len and max_seq_len != sd["pos_emb.weight"].shape[0]:
        raise LmforgeError("GPT-2 has learned positions: max_seq_len cannot change its context")
    tokenizer, kind, note, hf_ids = import_tokenizer(hf_dir)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise LmforgeError(
            f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size} rows"
        )
    order = list(range(cfg.vocab_size))
    if hf_ids is not None:
        order = hf_ids + sorted(set(order) - set(hf_ids))  # unused HF rows keep their order at the end
    report: dict[str, Any] = {
        "arch": cfg.arch,
        "hf_family": cfg.hf_family,
        "vocab_size": cfg.vocab_size,
        "tokenizer": kind,
        "tokenizer_note": note,
        "hf_ids": order,
        "reordered": order != list(range(cfg.vocab_size)),
    }
    if report["reordered"]:
        index = torch.tensor(order)
        sd["tok_emb.weight"] = sd["tok_emb.weight"][index]
        sd["lm_head.weight"] = sd["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"][index]
    model = build_from_state_dict(cfg, sd, _dtype(dtype, torch.float32), str(hf_dir), progress)
    return model, tokenizer, report


def import_tokenizer(hf_dir: Path):
    """(tokenizer or None, "converted" | "kept" | None, note, hf_ids of a converted one or None)."""
    from lmforge.tokenizer.hf_tokenizer import HFTokenizer

    if not (hf_dir / "tokenizer.json").is_file():
        return None, None, f"{hf_dir}: no tokenizer.json", None
    kept = HFTokenizer.from_hf_dir(hf_dir)
    try:
        tok, hf_ids = tokenizer_from_hf(hf_dir / "tokenizer.json")
    except LmforgeError as e:
        return kept, "kept", str(e), None
    if kept.chat_template_source == "model" and kept.chat_template != tok.chat_template_jinja:
        return kept, "kept", "it brings a chat template of its own", None
    return tok, "converted", "", hf_ids


def build_from_state_dict(
    cfg: ModelConfig,
    sd: dict[str, torch.Tensor],
    dtype: torch.dtype,
    source: str,
    progress: bool | None = False,
):
    """A Transformer holding exactly the tensors of `sd` (no random init), in eval mode."""
    from tqdm import tqdm

    from lmforge.model.transformer import Transformer, rope_inv_freq

    with torch.device("meta"):  # no random init: every weight is overwritten
        model = Transformer(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise LmforgeError(
            f"{source}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
    with torch.no_grad():
        for name in tqdm(
            own, desc="import", unit="tensor", disable=None if progress is None else not progress
        ):
            if own[name].shape != sd[name].shape:
                raise LmforgeError(
                    f"{source}: tensor {name} has shape {tuple(sd[name].shape)}, "
                    f"the model {tuple(own[name].shape)}"
                )
            own[name].copy_(sd[name])
        if model.inv_freq is not None:  # a non-persistent buffer: to_empty left it uninitialised
            model.inv_freq.copy_(rope_inv_freq(cfg))
    return model.eval()
