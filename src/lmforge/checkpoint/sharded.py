"""Sharded checkpoints through `torch.distributed.checkpoint` (DCP), loadable under any layout.

Every rank writes only the shards it holds (FSDP shards, tensor-parallel slices, its pipeline
stage's layers); DCP records the global shape and offsets of every piece in `.metadata`, so the
same checkpoint loads under another layout (FSDP on 4 ranks -> FSDP x TP on 4 ranks -> a single
process for export and inference) and the optimizer state follows its parameters.

State is keyed by parameter name (`get_state_dict` flattens FSDP/DDP/TP wrappers back to the
plain Transformer's names), so a sharded checkpoint and a `model.safetensors` one describe the
same tensors. Layout inside a checkpoint directory:

    step_000200/
      dcp/.metadata, dcp/__0_0.distcp, ...   (written here)
      config.json, tokenizer/, state.json     (written by the trainer's checkpoint module)
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import torch
import torch.nn as nn

from lmforge.errors import LmforgeError

DCP_DIR = "dcp"


def dcp_path(ckpt_dir: str | Path) -> Path:
    """The DCP folder of a checkpoint directory (or the folder itself if it holds `.metadata`)."""
    p = Path(ckpt_dir)
    return p if (p / ".metadata").exists() else p / DCP_DIR


def is_sharded(ckpt_dir: str | Path) -> bool:
    return (dcp_path(ckpt_dir) / ".metadata").exists()


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def _is_dist() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _is_dist():
        import torch.distributed as dist

        dist.barrier()


def _rank() -> int:
    if _is_dist():
        import torch.distributed as dist

        return dist.get_rank()
    return 0


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None, ckpt_dir: str | Path) -> Path:
    """Collective: every rank calls it. Writes ckpt_dir/dcp atomically (a temp folder that rank 0
    renames once every rank has finished) and returns that path."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    final = Path(ckpt_dir) / DCP_DIR
    token = [uuid.uuid4().hex[:8]]
    if _is_dist():
        dist.broadcast_object_list(token, src=0)  # one temp name for all ranks
    tmp = Path(ckpt_dir) / f".{DCP_DIR}.tmp-{token[0]}"
    dcp.save(_state(model, optimizer), checkpoint_id=str(tmp))
    _barrier()
    if _rank() == 0:
        from lmforge.fileio import atomic_rename_dir

        atomic_rename_dir(tmp, final)
    _barrier()
    return final


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None, ckpt_dir: str | Path) -> None:
    """Collective: load a DCP checkpoint into `model` (and `optimizer`) as they are sharded now,
    whatever layout wrote it. Works in a single process too (no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    path = dcp_path(ckpt_dir)
    if not (path / ".metadata").exists():
        raise LmforgeError(f"{ckpt_dir}: not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    state = _state(model, optimizer)
    if optimizer is not None and not _has_optim(path):
        raise LmforgeError(f"{ckpt_dir}: the sharded checkpoint holds weights only, no optimizer state to resume")
    try:
        dcp.load(state, checkpoint_id=str(path), no_dist=not _is_dist())
    except (CheckpointException, RuntimeError, ValueError) as e:  # missing keys, mismatched shapes
        raise LmforgeError(f"{ckpt_dir}: cannot load the sharded checkpoint into this model ({_first_line(e)})") from e
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _first_line(e: BaseException) -> str:
    """CheckpointException carries every rank's traceback; keep the root cause."""
    text = str(e)
    for line in reversed(text.splitlines()):
        if line.strip() and not line.startswith(" "):
            return line.strip()
    return text


def _has_optim(path: Path) -> bool:
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(path)).read_metadata()
    return any(k.startswith("optim.") for k in meta.state_dict_metadata)


def full_state_dict(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict from a sharded checkpoint, in one process on CPU:
    the conversion used for export and inference (`consolidate`)."""
    import torch.distributed.checkpoint as dcp

    path = dcp_path(ckpt_dir)
    if not (path / ".metadata").exists():
        raise LmforgeError(f"{ckpt_dir}: not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    meta = dcp.FileSystemReader(str(path)).read_metadata()
    state: dict[str, torch.Tensor] = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(md, "size"):
            state[key[len("model."):]] = torch.empty(md.size, dtype=md.properties.dtype)
    dcp.load({"model": state}, checkpoint_id=str(path), no_dist=True)
    return state


def load_into_model(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Single process: fill a plain Transformer from a sharded checkpoint (strict on names)."""
    state = full_state_dict(ckpt_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _tied_alias(model, k)]
    if missing or unexpected:
        raise LmforgeError(
            f"{ckpt_dir}: sharded checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def _tied_alias(model: nn.Module, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.cfg, "tie_embeddings", False)


def consolidate(ckpt_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Turn a sharded checkpoint into a plain one: `model.safetensors` next to its config.json
    (or in out_dir with a copy of config.json and tokenizer/). Returns the directory written."""
    from safetensors.torch import save

    from lmforge.fileio import atomic_write

    src = Path(ckpt_dir)
    dst = Path(out_dir) if out_dir else src
    state = full_state_dict(src)
    cfg = _read_model_cfg(src)
    if cfg.get("tie_embeddings") and "lm_head.weight" in state:
        state.pop("lm_head.weight")  # stored once, as the plain checkpoint format does
    dst.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst / "model.safetensors", "wb") as f:
        f.write(save({k: v.contiguous() for k, v in state.items()}))
    if dst != src:
        for name in ("config.json", "tokenizer"):
            if (src / name).is_dir():
                shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
            elif (src / name).exists():
                shutil.copy2(src / name, dst / name)
    return dst


def _read_model_cfg(ckpt_dir: Path) -> dict:
    from lmforge.fileio import read_json

    cfg_path = ckpt_dir / "config.json"
    return read_json(cfg_path).get("model", {}) if cfg_path.exists() else {}



def write_sharded_checkpoint(
    ckpt_root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer,
    *,
    stage: str,
    train_state: dict,
    optimizer_state: dict,
    extra: dict | None = None,
) -> Path:
    """Collective: the trainer's checkpoint `ckpt_root/step_NNNNNN` under any parallel layout.

    Every rank writes its shards of the weights and optimizer state to `dcp/` (the resumable,
    reshardable copy); rank 0 then consolidates the weights into `model.safetensors` (read back
    from the DCP files, so it works for pipeline stages too) and writes config.json, tokenizer/,
    state.json and optimizer.pt (RNG state only), and publishes the directory atomically.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save

    from lmforge.checkpoint import consolidated as ckpt_io
    from lmforge.fileio import atomic_rename_dir, atomic_write, atomic_write_json

    ckpt_root = Path(ckpt_root)
    final = ckpt_root / ckpt_io.step_dir_name(step)
    token = [uuid.uuid4().hex[:8]]
    if _is_dist():
        dist.broadcast_object_list(token, src=0)
    tmp = ckpt_root / f".tmp-{final.name}-{token[0]}"
    dcp.save(_state(model, optimizer), checkpoint_id=str(tmp / DCP_DIR))
    _barrier()
    if _rank() == 0:
        try:
            state = full_state_dict(tmp)
            if model.cfg.tie_embeddings:
                state.pop("lm_head.weight", None)
            with atomic_write(tmp / ckpt_io.WEIGHTS, "wb") as f:
                f.write(save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"}))
            atomic_write_json(tmp / "config.json", {
                "model": ckpt_io.model_config_dict(model.cfg),
                "stage": stage,
                "step": step,
                "tokenizer_hash": getattr(tokenizer, "hash", None),
                "arch_extra": dict(extra or {}),
            })
            if tokenizer is not None:
                tokenizer.save(tmp / "tokenizer")
            torch.save(optimizer_state, tmp / "optimizer.pt")
            atomic_write_json(tmp / "state.json", train_state)
            atomic_rename_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _barrier()
    return final
