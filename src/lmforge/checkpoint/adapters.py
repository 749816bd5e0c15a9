"""Adapter-only checkpoints (LoRA): the low-rank adapters of a stage and a pointer to the checkpoint
they adapt, instead of a full copy of the weights.

A LoRA stage's `step_NNNNNN/` holds, in place of model.safetensors:

    adapter.safetensors  per adapted linear module (lmforge's names, e.g. layers.0.attn.wq):
                         `<module>.lora_A.weight` [rank, in] and `<module>.lora_B.weight` [out, rank]
    config.json          as every checkpoint ("model" is the base's config), plus "adapter":
                         {"type": "lora", "rank", "alpha", "dropout", "targets", "modules",
                          "base": {"path", "relative", "hash", "stage", "step"}}

The model it describes is the base with `W + (alpha / rank) * B @ A` on every adapted weight. The
base is any checkpoint, an adapter checkpoint too (a LoRA DPO stage on a LoRA SFT one). It is looked
up at `relative` (from the adapter checkpoint: the run directory moved as a whole) and then at the
absolute `path`, and used only when its weights hash to `hash` (`weights_hash`), so adapters never
land silently on another model. Training state (state.json, optimizer.pt) is as in any checkpoint;
optimizer.pt's optimizer state is keyed by parameter name, unsharded, so it resumes on any number
of ranks.

A model being trained with adapters carries an `AdapterSpec` (attribute `adapter_spec`, set by
lmforge.posttrain.lora); the checkpoint manager writes adapter checkpoints for such a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.checkpoint.sharded import DCP_DIR, dcp_path
from lmforge.errors import LmforgeError
from lmforge.fileio import read_json

ADAPTER_WEIGHTS = "adapter.safetensors"
SPEC_ATTR = "adapter_spec"
BASE_LAYER = ".base_layer"  # peft keeps the Linear it wraps under this name


@dataclass
class AdapterSpec:
    """What a model trained with adapters carries for its checkpoints."""

    info: dict  # config.json's "adapter" entry (its base pointer without "relative")
    params: dict[str, str]  # tensor name in adapter.safetensors -> the model's parameter name


def spec_of(model: torch.nn.Module) -> AdapterSpec | None:
    return getattr(model, SPEC_ATTR, None)


def is_adapter_checkpoint(ckpt: Path) -> bool:
    return (Path(ckpt) / ADAPTER_WEIGHTS).exists()


def checkpoint_name(param_name: str) -> str:
    """The name a (frozen) weight has in a full checkpoint: peft's wrapper keeps the wrapped Linear
    as `base_layer`, so `layers.0.attn.wq.base_layer.weight` is `layers.0.attn.wq.weight`."""
    return param_name.replace(BASE_LAYER + ".", ".")


def resume_key(info: dict) -> dict:
    """What of an adapter checkpoint decides whether a run may resume from it: the adapter settings
    and the base's content, not where the base lies."""
    return {**{k: v for k, v in info.items() if k != "base"}, "base": info["base"]["hash"]}


# ---------------------------------------------------------------------------- the base


_HASHES: dict[tuple, str] = {}  # (files, sizes, mtimes) -> hash, within one process


def _weight_files(ckpt: Path) -> list[Path]:
    """The files that hold a checkpoint's weights: its DCP shards when it has them (a
    model.safetensors consolidated from them later is derived and left out), else model.safetensors,
    or adapter.safetensors."""
    if is_adapter_checkpoint(ckpt):
        return [ckpt / ADAPTER_WEIGHTS]
    if (dcp_path(ckpt) / ".metadata").exists():
        return sorted(p for p in (ckpt / DCP_DIR).iterdir() if p.is_file())
    if (ckpt / "model.safetensors").exists():
        return [ckpt / "model.safetensors"]
    raise LmforgeError(f"{ckpt}: no weights to hash (model.safetensors, {DCP_DIR}/ or {ADAPTER_WEIGHTS})")


def weights_hash(ckpt: str | Path) -> str:
    """A content hash (xxh3-128) of a checkpoint's weights; an adapter checkpoint's covers its base's
    hash too. Cached per process by file sizes and modification times."""
    import xxhash

    ckpt = Path(ckpt)
    files = _weight_files(ckpt)
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key in _HASHES:
        return _HASHES[key]
    h = xxhash.xxh3_128()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    if is_adapter_checkpoint(ckpt):
        h.update(read_info(ckpt)["base"]["hash"].encode())
    _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def base_pointer(base: Path) -> dict:
    """The "base" entry for adapters trained on checkpoint `base` (its path made absolute)."""
    base = Path(base).resolve()
    cfg = read_json(base / "config.json")
    return {"path": str(base), "hash": weights_hash(base), "stage": cfg.get("stage"), "step": cfg.get("step")}


def with_relative(info: dict, ckpt_dir: Path) -> dict:
    """`info` with the base's path relative to the adapter checkpoint directory `ckpt_dir`."""
    rel = os.path.relpath(info["base"]["path"], Path(ckpt_dir).resolve())
    return {**info, "base": {**info["base"], "relative": rel}}


def read_info(ckpt: Path) -> dict:
    info = read_json(Path(ckpt) / "config.json").get("adapter")
    if not isinstance(info, dict) or not isinstance(info.get("base"), dict) or "hash" not in info["base"]:
        raise LmforgeError(f"{ckpt / 'config.json'}: an adapter checkpoint without a valid 'adapter' entry")
    return info


def resolve_base(ckpt: Path) -> Path:
    """The base checkpoint of adapter checkpoint `ckpt`, checked against the hash it was trained on."""
    ckpt = Path(ckpt)
    base = read_info(ckpt)["base"]
    candidates = []
    if base.get("relative"):
        candidates.append((ckpt / base["relative"]).resolve())
    candidates.append(Path(base["path"]))
    found = [c for c in dict.fromkeys(candidates) if (c / "config.json").exists()]
    if not found:
        raise LmforgeError(
            f"{ckpt}: its base checkpoint {base['path']} is gone (moved or deleted?); the adapters apply "
            f"only to the checkpoint they were trained on ({base.get('stage')} step {base.get('step')}, "
            f"weights hash {base['hash']}): put it back there"
        )
    hashes = []
    for c in found:
        got = weights_hash(c)
        if got == base["hash"]:
            return c
        hashes.append(f"{c}: {got}")
    raise LmforgeError(
        f"{ckpt}: its base checkpoint has changed since the adapters were trained on it (weights hash "
        f"{base['hash']} expected; found {'; '.join(hashes)}): restore that checkpoint or retrain the "
        "adapters"
    )


def read_adapters(ckpt: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json's "adapter" entry, the tensors of adapter.safetensors)."""
    from safetensors.torch import load_file

    info = read_info(ckpt)
    try:
        tensors = load_file(str(Path(ckpt) / ADAPTER_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for torn / foreign files
        raise LmforgeError(f"{Path(ckpt) / ADAPTER_WEIGHTS}: cannot read adapters ({e})") from None
    missing = [
        f"{m}.lora_{x}.weight"
        for m in info.get("modules", [])
        for x in "AB"
        if f"{m}.lora_{x}.weight" not in tensors
    ]
    if missing:
        raise LmforgeError(f"{Path(ckpt) / ADAPTER_WEIGHTS}: missing adapters {missing[:3]}")
    return info, tensors


def scale(info: dict) -> float:
    return float(info["alpha"]) / int(info["rank"])


def lora_delta(a: torch.Tensor, b: torch.Tensor, s: float, index: tuple[slice, ...]) -> torch.Tensor:
    """The [rows, cols] region `index` of the merged update s * B @ A, in float32 (only that region
    is computed: B's rows times A's columns)."""
    rows, cols = index
    return s * (b[rows].float() @ a[:, cols].float())
