"""Checkpoints: one self-contained directory per step, written atomically.

Layout of `<run_dir>/<stage>/checkpoints/step_NNNNNN/`:

    model.safetensors   the plain Transformer state dict (a tied lm_head is stored once, as tok_emb)
    adapter.safetensors instead of model.safetensors, for a stage trained with LoRA: only the adapters,
                        config.json pointing at the base checkpoint (lmforge.checkpoint.adapters)
    dcp/                instead of model.safetensors, under more than one process: the sharded
                        weights and optimizer (lmforge.checkpoint.sharded); model.safetensors is
                        consolidated from it into the checkpoint the first time a model is loaded
    config.json         {"model": ModelConfig, "stage", "step", "tokenizer_hash", "arch_extra"}
    tokenizer/          a full copy of the tokenizer: a checkpoint loads without its run directory
    state.json          (training checkpoints) step, loader, guard, config hash, val loss
    optimizer.pt        (training checkpoints) optimizer state + RNG states (loaded weights_only)

A checkpoint is written into a temp directory beside its final name and published with
`atomic_rename_dir`, so a killed process leaves either the old set of checkpoints or the new
one, never a torn directory. The temp's name says which process owns it; what a killed save left
is removed when the checkpoints are next listed or written (`remove_checkpoint_leftovers`).
`checkpoints/best.json` names the best step by validation loss; pruning keeps the last K and that one.

Nothing here unpickles: weights are safetensors, optimizer.pt is read with `weights_only=True`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.checkpoint import adapters, sharded
from lmforge.errors import LmforgeError
from lmforge.fileio import (
    atomic_rename_dir,
    atomic_write_json,
    owned_temp_dir,
    read_json,
    remove_stale_temps,
    write_manifest,
)

STAGE_ORDER = ("pretrain", "sft", "dpo", "rl")  # load_model on a run dir picks the last one with checkpoints
STEP_RE = re.compile(r"^step_(\d+)$")
MOVED_ASIDE_RE = re.compile(r"^(step_\d+)\.old$")  # atomic_rename_dir's name for the directory it replaces
WEIGHTS = "model.safetensors"


# ---------------------------------------------------------------------------- finding checkpoints


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the complete checkpoints under a `checkpoints/` folder, oldest first. Temp
    folders of killed saves are removed on the way (a run's next start lists its checkpoints)."""
    if not ckpt_root.is_dir():
        return []
    remove_stale_temps(ckpt_root, "step_")
    out = []
    for d in ckpt_root.iterdir():
        m = STEP_RE.match(d.name)
        if m and d.is_dir() and is_checkpoint(d):
            out.append((int(m.group(1)), d))
    return sorted(out)


def has_weights(path: Path) -> bool:
    """Whether a checkpoint directory holds weights: model.safetensors, DCP shards or adapters."""
    return (path / WEIGHTS).exists() or sharded.is_sharded(path) or adapters.is_adapter_checkpoint(path)


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").exists() and has_weights(path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, a stage dir (its latest checkpoint) or a run dir (the latest checkpoint
    of the last stage that has any, in the order pretrain < sft < dpo < rl) -> the checkpoint dir."""
    p = Path(path)
    if not p.exists():
        raise LmforgeError(f"{p}: no such checkpoint, stage or run directory")
    if is_checkpoint(p):
        return p
    if (p / "config.json").exists() or has_weights(p):
        missing = f"{WEIGHTS} (or {sharded.DCP_DIR}/)" if not has_weights(p) else "config.json"
        raise LmforgeError(f"{p}: incomplete checkpoint ({missing} is missing)")
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return found[-1][1]
    for stage in reversed(STAGE_ORDER):
        found = list_checkpoints(p / stage / "checkpoints")
        if found:
            return found[-1][1]
    raise LmforgeError(
        f"{p}: no checkpoint found (expected a step_NNNNNN directory with {WEIGHTS} or {sharded.DCP_DIR}/ "
        "and config.json, "
        f"a stage directory holding checkpoints/, or a run directory with one of {', '.join(STAGE_ORDER)})"
    )


def remove_checkpoint_leftovers(ckpt_root: Path) -> None:
    """Undo what a killed save left in a `checkpoints/` folder: temp folders of writers that are gone,
    and a `step_N.old` that `atomic_rename_dir` had moved aside (put back when `step_N` is missing,
    deleted otherwise). Writers call it before they write; readers only remove temps (they never rename)."""
    remove_stale_temps(ckpt_root, "step_")
    if not ckpt_root.is_dir():
        return
    for d in ckpt_root.iterdir():
        m = MOVED_ASIDE_RE.match(d.name)
        if not m:
            continue
        if (ckpt_root / m.group(1)).exists():
            shutil.rmtree(d, ignore_errors=True)
        else:
            os.replace(d, ckpt_root / m.group(1))


# ---------------------------------------------------------------------------- weights


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain Transformer under torch.compile / DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with a tied lm_head stored once and every tensor contiguous on CPU."""
    model = unwrap(model)
    sd = model.state_dict()
    if getattr(getattr(model, "cfg", None), "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for torn / foreign files
        raise LmforgeError(f"{path}: cannot read weights ({e})") from None
    model = unwrap(model)
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise LmforgeError(f"{path}: weights do not match the model config (shapes: {wrong[:3]})")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = getattr(getattr(model, "cfg", None), "tie_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise LmforgeError(
            f"{path}: weights do not match the model config "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )


def weights_file(ckpt: Path) -> Path:
    """The checkpoint's model.safetensors. A sharded checkpoint is consolidated into it the first
    time (atomically: concurrent readers each write a whole file and the last rename wins)."""
    if (ckpt / WEIGHTS).exists() or not sharded.is_sharded(ckpt):
        return ckpt / WEIGHTS
    try:
        sharded.consolidate(ckpt)
    except OSError as e:
        raise LmforgeError(
            f"{ckpt}: a sharded checkpoint, and its consolidated {WEIGHTS} cannot be written there ({e}); "
            "copy the checkpoint to a writable folder and load it from there"
        ) from None
    return ckpt / WEIGHTS


def model_config_dict(cfg: Any) -> dict:
    """ModelConfig as a dict with the size fields resolved (no preset / depth to re-apply)."""
    d = dataclasses.asdict(cfg)
    d["preset"], d["depth"] = "", 0
    return d


# ---------------------------------------------------------------------------- saving


def write_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    stage: str,
    extra: dict | None = None,
    train_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write `ckpt_root/step_NNNNNN` atomically and return it."""
    model = unwrap(model)
    remove_checkpoint_leftovers(ckpt_root)
    final = ckpt_root / step_dir_name(step)
    tmp = owned_temp_dir(ckpt_root, final.name)
    try:
        save_file(model_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        write_checkpoint_files(
            tmp, model.cfg, tokenizer, stage=stage, step=step, extra=extra, train_state=train_state,
            optimizer_state=optimizer_state,
        )
        atomic_rename_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_adapter_checkpoint(
    ckpt_root: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    model_cfg: Any,
    tokenizer: Any,
    *,
    stage: str,
    info: dict,
    train_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write the adapter checkpoint `ckpt_root/step_NNNNNN` atomically (lmforge.checkpoint.adapters):
    `tensors` as adapter.safetensors and `info` (with the base's path relative to it) in config.json."""
    remove_checkpoint_leftovers(ckpt_root)
    final = ckpt_root / step_dir_name(step)
    tmp = owned_temp_dir(ckpt_root, final.name)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / adapters.ADAPTER_WEIGHTS), metadata={"format": "pt"})
        write_checkpoint_files(
            tmp, model_cfg, tokenizer, stage=stage, step=step, train_state=train_state,
            optimizer_state=optimizer_state, adapter=adapters.with_relative(info, final),
        )
        atomic_rename_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_checkpoint_files(
    d: Path,
    model_cfg: Any,
    tokenizer: Any,
    *,
    stage: str,
    step: int,
    extra: dict | None = None,
    train_state: dict | None = None,
    optimizer_state: dict | None = None,
    adapter: dict | None = None,
) -> None:
    """Everything of a checkpoint but its weights, into the (temp) directory `d`."""
    config = {
        "model": model_config_dict(model_cfg),
        "stage": stage,
        "step": step,
        "tokenizer_hash": getattr(tokenizer, "hash", None),
        "arch_extra": dict(extra or {}),
    }
    if adapter is not None:
        config["adapter"] = adapter
    atomic_write_json(d / "config.json", config)
    if tokenizer is not None:
        tokenizer.save(d / "tokenizer")
    if optimizer_state is not None:
        torch.save(optimizer_state, d / "optimizer.pt")
    if train_state is not None:
        atomic_write_json(d / "state.json", train_state)


def save_model_checkpoint(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    stage: str = "import",
    step: int = 0,
    extra: dict | None = None,
    written_by: str = "",
) -> Path:
    """A weights-only checkpoint at exactly `out_dir` (for imports, merges, exports back in), replacing
    what is there. With `written_by` it carries a manifest naming that writer (fileio.check_replaceable)."""
    out_dir = Path(out_dir)
    remove_stale_temps(out_dir.parent, out_dir.name)
    tmp_root = owned_temp_dir(out_dir.parent, out_dir.name)
    try:
        written = write_checkpoint(tmp_root, step, model, tokenizer, stage=stage, extra=extra)
        if written_by:
            write_manifest(written, written_by)
        atomic_rename_dir(written, out_dir)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return out_dir


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the last `keep_last` checkpoints and the best one (best.json)."""
    best = None
    if (ckpt_root / "best.json").exists():
        best = read_json(ckpt_root / "best.json").get("step")
    found = list_checkpoints(ckpt_root)
    for step, d in found[:-keep_last] if keep_last > 0 else found:
        if step != best:
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------- loading


def read_checkpoint_config(ckpt: Path) -> dict:
    cfg = read_json(ckpt / "config.json")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise LmforgeError(f"{ckpt / 'config.json'}: not an lmforge checkpoint config (no 'model' key)")
    return cfg


def build_model_config(ckpt: Path, data: dict):
    from lmforge.config import from_dict
    from lmforge.model.config import ModelConfig

    return from_dict(ModelConfig, data, where="model", source=str(ckpt / "config.json"))


def read_checkpoint_model(path: str | Path):
    """(checkpoint directory, ModelConfig, Tokenizer) of a checkpoint, stage or run directory,
    without reading its weights (a sharded build loads them itself, shard by shard)."""
    from lmforge.tokenizer import Tokenizer

    ckpt = resolve_checkpoint(path)
    cfg_json = read_checkpoint_config(ckpt)
    model_cfg = build_model_config(ckpt, cfg_json["model"])
    if not (ckpt / "tokenizer").is_dir():
        raise LmforgeError(f"{ckpt}: checkpoint has no tokenizer/ directory")
    tokenizer = Tokenizer.load(ckpt / "tokenizer")
    want = cfg_json.get("tokenizer_hash")
    if want and tokenizer.hash != want:
        raise LmforgeError(
            f"{ckpt}: tokenizer/ has hash {tokenizer.hash} but the weights were trained with {want}"
        )
    return ckpt, model_cfg, tokenizer


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(Transformer in eval mode, Tokenizer) from a checkpoint, stage or run directory."""
    from lmforge.model.transformer import Transformer

    ckpt, model_cfg, tokenizer = read_checkpoint_model(path)
    model = _build(Transformer, model_cfg)
    load_checkpoint_weights(model, ckpt)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), tokenizer


def load_checkpoint_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """A checkpoint's weights into a plain model: its model.safetensors (consolidated from DCP shards
    the first time), or for an adapter checkpoint its base's weights with the adapters merged in."""
    if adapters.is_adapter_checkpoint(ckpt):
        load_checkpoint_weights(model, adapters.resolve_base(ckpt))
        merge_adapters(model, ckpt)
        return
    load_weights(model, weights_file(ckpt))


def merge_adapters(model: torch.nn.Module, ckpt: Path) -> None:
    """Add an adapter checkpoint's updates (alpha / rank) * B @ A to the weights of `model` as it is
    sharded now: each rank computes only its shard's region of each update."""
    from torch.distributed.tensor import DTensor

    info, tensors = adapters.read_adapters(ckpt)
    s = adapters.scale(info)
    params = {adapters.checkpoint_name(n): p for n, p in unwrap(model).named_parameters()}
    with torch.no_grad():
        for module in info["modules"]:
            param = params.get(f"{module}.weight")
            a, b = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
            if param is None or tuple(param.shape) != (b.shape[0], a.shape[1]):
                shape = None if param is None else tuple(param.shape)
                raise LmforgeError(f"{ckpt}: adapters for {module} do not fit the model (weight {shape})")
            local = param.to_local() if isinstance(param, DTensor) else param
            index = local_index(param)
            local.add_(adapters.lora_delta(a.to(local.device), b.to(local.device), s, index).to(local.dtype))


def _build(cls, cfg):
    """Build without paying for a random init (the weights are overwritten right away)."""
    init = cls.init_weights
    try:
        cls.init_weights = lambda self: None
        model = cls(cfg)
    finally:
        cls.init_weights = init
    if model.inv_freq is not None:  # the rotary buffer is not in the state dict: compute it
        from lmforge.model.transformer import rope_inv_freq

        model.inv_freq.copy_(rope_inv_freq(cfg))
    return model


def load_training_state(ckpt: Path) -> tuple[dict, dict]:
    """(state.json, optimizer.pt contents) of a resumable checkpoint."""
    if not (ckpt / "state.json").exists() or not (ckpt / "optimizer.pt").exists():
        raise LmforgeError(f"{ckpt}: not a resumable checkpoint (state.json / optimizer.pt missing)")
    state = read_json(ckpt / "state.json")
    try:
        opt = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise LmforgeError(f"{ckpt / 'optimizer.pt'}: cannot read optimizer state ({e})") from None
    return state, opt


# ---------------------------------------------------------------------------- shard-wise loading


def local_index(param: torch.Tensor) -> tuple[slice, ...]:
    """The region of the full tensor that this rank's piece of `param` covers: all of it for a
    plain tensor, the local shard of a DTensor (FSDP, tensor parallel, or both)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return tuple(slice(0, n) for n in param.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return tuple(slice(o, o + n) for o, n in zip(offset, shape))


def fill_local_shards(model: torch.nn.Module, read, names: set[str] | None = None) -> None:
    """Copy into every parameter of `model` (or those in `names`), as it is sharded now, its piece
    of the full tensor, asking `read(name, index)` for that piece only (one slice per dimension)."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for name, param in unwrap(model).named_parameters():
            if names is not None and name not in names:
                continue
            local = param.to_local() if isinstance(param, DTensor) else param
            local.copy_(read(name, local_index(param)))


def load_weights_sliced(model: torch.nn.Module, path: Path, skip: set[str] = frozenset()) -> None:
    """Load a model.safetensors into `model` as it is sharded now (all but the `skip` parameters).
    Each rank reads only the slices its shards cover (`safe_open` maps the file; `get_slice` reads
    just those rows and columns), so no rank ever holds a full copy of the weights."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises its own error types for torn / foreign files
        raise LmforgeError(f"{path}: cannot read weights ({e})") from None
    # parameter name -> its name in the file (peft's wrappers rename the weights they wrap)
    stored = {k: adapters.checkpoint_name(k) for k, _ in unwrap(model).named_parameters() if k not in skip}
    own = {stored[k]: p for k, p in unwrap(model).named_parameters() if k in stored}
    with handle as f:
        names = set(f.keys())
        tied = getattr(getattr(unwrap(model), "cfg", None), "tie_embeddings", False)
        missing = [k for k in own if k not in names]
        unexpected = [k for k in names if k not in own and not (tied and k == "lm_head.weight")]
        if missing or unexpected:
            raise LmforgeError(
                f"{path}: weights do not match the model config "
                f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
            )
        wrong = [
            f"{k} {tuple(f.get_slice(k).get_shape())} vs {tuple(p.shape)}"
            for k, p in own.items()
            if tuple(f.get_slice(k).get_shape()) != tuple(p.shape)
        ]
        if wrong:
            raise LmforgeError(f"{path}: weights do not match the model config (shapes: {wrong[:3]})")
        fill_local_shards(model, lambda name, index: f.get_slice(stored[name])[index], set(stored))


def load_weights_sharded(model: torch.nn.Module, ckpt: Path, skip: set[str] = frozenset()) -> None:
    """Load a checkpoint's weights into a model that is already sharded, shard by shard: sliced
    reads of model.safetensors when the checkpoint has one, else its DCP shards (collective).
    `skip`: parameters the checkpoint does not hold (a head added for the stage, adapters). An
    adapter checkpoint loads its base, then merges its adapters into the shards. A model wrapped by
    peft (its weights renamed `base_layer`) reads DCP shards through their consolidated copy."""
    from lmforge.checkpoint.sharded import is_sharded, load_sharded

    if adapters.is_adapter_checkpoint(ckpt):
        load_weights_sharded(model, adapters.resolve_base(ckpt), skip)
        merge_adapters(model, ckpt)
        return
    renamed = any(adapters.BASE_LAYER in k for k, _ in unwrap(model).named_parameters())
    if (ckpt / WEIGHTS).exists() or (renamed and is_sharded(ckpt)):
        load_weights_sliced(model, weights_file(ckpt), skip)
    elif is_sharded(ckpt):
        load_sharded(model, None, ckpt, frozenset(skip))
    else:
        raise LmforgeError(f"{ckpt}: no {WEIGHTS} and no sharded weights to load")
