"""Sharded checkpoints through `torch.distributed.checkpoint` (DCP), loadable under any layout.

Every rank writes only the shards it holds (FSDP shards, tensor-parallel slices, its pipeline
stage's layers); DCP records the global shape and offsets of every piece in `.metadata`, so the
same checkpoint loads under another layout (FSDP on 4 ranks -> FSDP x TP on 4 ranks -> a single
process for export and inference) and the optimizer state follows its parameters.

State is keyed by parameter name (`get_state_dict` flattens FSDP/DDP/TP wrappers back to the
plain Transformer's names), so a sharded checkpoint and a `model.safetensors` one describe the
same tensors. Layout inside a checkpoint directory:

    step_000200/
      dcp/.metadata, dcp/__0_0.distcp, ...   (written here, by every rank: `write_shards`)
      config.json, tokenizer/, state.json     (written by rank 0: lmforge.checkpoint.manager)
      model.safetensors                       (only once something reads the weights: `consolidate`)

Training writes no consolidated copy (gathering a large model on one rank at every save is what
sharding avoids): `consolidate` turns the shards into `model.safetensors` inside the checkpoint
the first time a consumer (load_model: generate, chat, eval, export, serve) needs it.

Loading never runs code from the checkpoint. DCP's own reader unpickles `.metadata` with plain
`pickle` and its planner unpickles non-tensor values (the optimizer's param_groups) with
`torch.load(weights_only=False)`; a crafted file would run its payload on resume. Every load here
goes through `SafeReader` (a restricted unpickler that knows only the classes DCP metadata is made
of, and refuses data files outside the checkpoint folder) and `SafeLoadPlanner` (non-tensor values
through `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from lmforge.errors import LmforgeError

DCP_DIR = "dcp"

# Every global a DCP `.metadata` pickle refers to (listed with pickletools from real checkpoints of
# torch 2.13: model + AdamW state, single process and FSDP/TP layouts), plus the torch dtypes.
_METADATA_GLOBALS = frozenset(
    [
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "MetadataIndex",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    ]
    + [
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
    ]
)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} has no place in checkpoint metadata")


def read_metadata(path: str | Path):
    """A DCP `.metadata` file -> its Metadata, without running anything the file asks for: a global
    outside `_METADATA_GLOBALS`, a foreign object or a data file outside the folder is an error."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(path)
    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except Exception as e:  # UnpicklingError, EOFError, the errors of a refused or torn pickle
        raise LmforgeError(f"{path}: not a valid checkpoint metadata file ({e})") from None
    if not isinstance(meta, Metadata) or not isinstance(meta.state_dict_metadata, dict):
        raise LmforgeError(f"{path}: not a valid checkpoint metadata file (holds a {type(meta).__name__})")
    for info in (meta.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or not _inside(rel):
            raise LmforgeError(f"{path}: refers to data file {rel!r} outside its checkpoint folder")
    return meta


def _inside(relative: str) -> bool:
    p = PurePosixPath(relative)
    return bool(relative) and not p.is_absolute() and ".." not in p.parts and "\\" not in relative


class SafeReader(FileSystemReader):
    """DCP's FileSystemReader with `.metadata` read by `read_metadata` (the restricted unpickler)."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        from torch.distributed.checkpoint.metadata import StorageMeta

        rank = kwargs.get("rank")
        meta = read_metadata(Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata"))
        if meta.storage_meta is None:
            meta.storage_meta = StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor values read by `torch.load(weights_only=True)`."""

    def __init__(self, where: Path) -> None:
        super().__init__()
        self.where = where

    def load_bytes(self, read_item, value) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:
            info = (self.metadata.storage_data or {}).get(read_item.storage_index) if self.metadata else None
            name = getattr(info, "relative_path", "?")
            raise LmforgeError(
                f"{self.where / name}: cannot read {read_item.dest_index.fqn} ({_first_line(e)})"
            ) from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _load(state: dict, path: Path, no_dist: bool) -> None:
    """dcp.load through the safe reader and planner; a LmforgeError raised inside DCP (which wraps
    every rank's exception in a CheckpointException) comes out as itself."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafeLoadPlanner(path), no_dist=no_dist)
    except CheckpointException as e:
        for exc, _ in e.failures.values():
            if isinstance(exc, LmforgeError):
                raise LmforgeError(str(exc)) from None
        raise


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
    renames once every rank has finished) and returns that path. A temp folder a killed save left
    in ckpt_dir is removed first."""
    import torch.distributed as dist

    from lmforge.fileio import atomic_rename_dir, owned_temp_name, remove_stale_temps

    final = Path(ckpt_dir) / DCP_DIR
    name = [owned_temp_name(DCP_DIR) if _rank() == 0 else ""]
    if _is_dist():
        dist.broadcast_object_list(name, src=0)  # one temp name for all ranks
    if _rank() == 0:
        remove_stale_temps(ckpt_dir, DCP_DIR)
    _barrier()
    tmp = Path(ckpt_dir) / name[0]
    write_shards(model, optimizer, tmp)
    _barrier()
    if _rank() == 0:
        atomic_rename_dir(tmp, final)
    _barrier()
    return final


def write_shards(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, dcp_dir: Path, *, async_group: Any = None
) -> Any:
    """Collective: every rank writes its shards of the model (and optimizer) state to `dcp_dir`
    and returns None once they are written. With `async_group` (a gloo process group that only
    checkpoint writes use, so the background collectives never interleave with training's) the
    save is DCP's async_save: the call returns once the state is copied to CPU memory, and the
    Future it returns completes when the files are written."""
    import torch.distributed.checkpoint as dcp

    if async_group is None:
        dcp.save(_state(model, optimizer), checkpoint_id=str(dcp_dir))
        return None
    return dcp.async_save(_state(model, optimizer), checkpoint_id=str(dcp_dir), process_group=async_group)


def load_sharded(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ckpt_dir: str | Path,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Collective: load a DCP checkpoint into `model` (and `optimizer`) as they are sharded now,
    whatever layout wrote it. Works in a single process too (no process group needed). `skip`:
    model parameters the checkpoint does not hold (a head added for a stage), left as they are."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    path = dcp_path(ckpt_dir)
    if not (path / ".metadata").exists():
        raise LmforgeError(f"{ckpt_dir}: not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    meta = read_metadata(path / ".metadata")
    state = _state(model, optimizer)
    state["model"] = {k: v for k, v in state["model"].items() if k not in skip}
    if optimizer is not None and not any(k.startswith("optim.") for k in meta.state_dict_metadata):
        raise LmforgeError(
            f"{ckpt_dir}: the sharded checkpoint holds weights only, no optimizer state to resume"
        )
    try:
        _load(state, path, no_dist=not _is_dist())
    except (CheckpointException, RuntimeError, ValueError) as e:  # missing keys, mismatched shapes
        raise LmforgeError(
            f"{ckpt_dir}: cannot load the sharded checkpoint into this model ({_first_line(e)})"
        ) from e
    if optimizer is None:
        set_model_state_dict(model, state["model"], options=StateDictOptions(strict=not skip))
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _first_line(e: BaseException) -> str:
    """CheckpointException carries every rank's traceback; keep the root cause."""
    text = str(e)
    for line in reversed(text.splitlines()):
        if line.strip() and not line.startswith(" "):
            return line.strip()
    return text


def full_state_dict(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict from a sharded checkpoint, in one process on CPU:
    the conversion used for export and inference (`consolidate`)."""
    path = dcp_path(ckpt_dir)
    if not (path / ".metadata").exists():
        raise LmforgeError(f"{ckpt_dir}: not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    meta = read_metadata(path / ".metadata")
    state: dict[str, torch.Tensor] = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(md, "size"):
            state[key[len("model.") :]] = torch.empty(md.size, dtype=md.properties.dtype)
    _load({"model": state}, path, no_dist=True)
    return state


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
        f.write(save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"}))
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
