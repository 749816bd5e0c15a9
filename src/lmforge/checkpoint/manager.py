"""The checkpoint manager of a training run: resume, save, roll back, prune (as torchtitan's
`CheckpointManager`), so that the training loop only says when.

It owns the run's `checkpoints/` folder and everything a checkpoint restores besides the
trainer's own counters: weights, optimizer, gradient scaler, RNG and data loader state, and
which checkpoint is the best by validation loss (`best.json`; pruning keeps the last K and that
one).

A single process writes `model.safetensors` + `optimizer.pt`. Under more than one process a
checkpoint is DCP only: every rank writes its shards of the weights and optimizer state to
`dcp/` and rank 0 the small files; nothing is gathered on one rank (`model.safetensors` is
consolidated from the shards later, by whoever loads the model). With `async_save` the shards
are written by DCP's async_save: a save stalls training only while the state is copied to CPU
memory; the checkpoint is published (renamed to `step_N`, then pruning) once every rank's
files are written, when the next save starts, before a rollback, or at `wait()` (the trainer's
end of training). A sharded checkpoint resumes on any number of ranks (DCP reshards it; the
loader's position is global), a single process included. The trainer's counters
(step, elapsed time, loss guard) travel in `state.json` as the dict it hands to `save` and
gets back from `resume`.

A model trained with adapters (LoRA: it carries an `AdapterSpec`, lmforge.checkpoint.adapters)
gets adapter checkpoints, under any number of processes: the adapters and the optimizer state,
gathered whole (they are small), written by rank 0 with a pointer to the base checkpoint; its
config hash covers the adapter settings and the base's content, so a run resumes only onto the
base it was trained on.

Resume modes: "auto" continues from the latest checkpoint when its config hash matches (the
trainer's: settings and data, lmforge.train.trainer) and otherwise starts fresh after moving the
old run aside (to `<out_dir>.previous`, replacing the one before); "always" requires a matching
checkpoint; "never" starts fresh, moving the old run aside the same way.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoint import adapters, sharded
from lmforge.checkpoint import consolidated as ckpt_io
from lmforge.config import config_hash as hash_of
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_rename_dir, atomic_write_json, owned_temp_name, read_json


def resumable_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the checkpoints under `ckpt_root` that hold training state, oldest first."""
    return [(s, d) for s, d in ckpt_io.list_checkpoints(ckpt_root) if (d / "state.json").exists()]


class CheckpointManager:
    """Checkpoints of the run in `out_dir` (under `out_dir/checkpoints`).

    `model` is the module as trained (possibly sharded / wrapped), `raw_model` the plain
    Transformer beneath it; `loader` has `state_dict()` / `load_state_dict()`. `distributed`:
    every rank writes its shards (DCP) and rank 0 (`is_main`) the rest; `async_save` (distributed
    only) writes the shards in the background. `run_files` are the
    other outputs of a run in `out_dir` (metrics, TensorBoard) that move aside with the
    checkpoints when a run starts fresh.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        model: torch.nn.Module,
        raw_model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        tokenizer: Any,
        stage: str,
        config_hash: str,
        keep_last: int,
        device: torch.device,
        scaler: torch.amp.GradScaler | None = None,
        distributed: bool = False,
        is_main: bool = True,
        async_save: bool = False,
        run_files: Sequence[str] = (),
        say: Callable[[str], None] = print,
    ):
        self.out_dir, self.root = Path(out_dir), Path(out_dir) / "checkpoints"
        self.model, self.raw_model, self.optimizer, self.scaler = model, raw_model, optimizer, scaler
        self.loader, self.tokenizer, self.stage, self.config_hash = loader, tokenizer, stage, config_hash
        self.keep_last, self.device, self.distributed, self.is_main = keep_last, device, distributed, is_main
        self.run_files, self.say = tuple(run_files), say
        self.adapters = adapters.spec_of(raw_model)
        if self.adapters is not None:
            key = {"run": config_hash, "adapter": adapters.resume_key(self.adapters.info)}
            self.config_hash = hash_of(key)
        self.best_val = math.inf
        self.saved_step = -1  # the step of the newest checkpoint written (-1: none)
        self.pending: _Unpublished | None = None  # a sharded save not yet published
        self.async_group = None
        if async_save and distributed:
            import torch.distributed as dist

            self.async_group = dist.new_group(backend="gloo")

    # ------------------------------------------------------------------ resume

    def resume(self, mode: str) -> dict | None:
        """The train state of the checkpoint the run continues from, everything else restored;
        None when the run starts fresh (see the module docstring for `mode`)."""
        found = ckpt_io.list_checkpoints(self.root)
        resumable = resumable_checkpoints(self.root)
        if mode == "never" or not resumable:
            if mode == "always":
                raise LmforgeError(f"train.resume is 'always' but {self.root} holds no resumable checkpoint")
            self.start_fresh(bool(found))
            return None
        step, d = resumable[-1]
        written_with = read_json(d / "state.json").get("config_hash")
        if written_with != self.config_hash:
            if mode == "always":
                raise LmforgeError(
                    f"{d}: its config differs from this run's (hash {written_with} vs {self.config_hash}); "
                    "use --train.resume never to start over"
                )
            self.say(f"{d} was trained with other settings or data; starting fresh")
            self.start_fresh(True)
            return None
        state = self.load(d, restore_loader=True, restore_rng=True)
        self.saved_step = step
        self.say(f"resumed from {d} (step {state['step']})")
        return state

    def start_fresh(self, had_checkpoints: bool) -> None:
        """Move an earlier run's checkpoints and files aside to `<out_dir>.previous`."""
        if not self.is_main:
            return
        if not had_checkpoints and not any((self.out_dir / name).exists() for name in self.run_files):
            return
        stale = self.out_dir.with_name(self.out_dir.name + ".previous")
        replaced = " (replacing the older run there)" if stale.exists() else ""
        shutil.rmtree(stale, ignore_errors=True)
        stale.mkdir(parents=True)
        for name in ("checkpoints", *self.run_files):
            if (self.out_dir / name).exists():
                shutil.move(str(self.out_dir / name), str(stale / name))
        self.say(f"moved the previous run's checkpoints and metrics to {stale}{replaced}")

    def load(self, d: Path, *, restore_loader: bool, restore_rng: bool) -> dict:
        """Weights, optimizer and scaler from checkpoint `d` (and the loader / RNG state when
        asked); returns its state.json."""
        state, opt = ckpt_io.load_training_state(d)
        if adapters.is_adapter_checkpoint(d) or self.adapters is not None:
            self.load_adapters(d, opt)
        elif sharded.is_sharded(d):  # written under a parallel layout: reshards onto this one
            sharded.load_sharded(self.model, self.optimizer, d)
        elif self.distributed:
            raise LmforgeError(
                f"{d}: a single-process checkpoint cannot resume a distributed run; use --train.resume never"
            )
        else:
            ckpt_io.load_weights(self.raw_model, d / ckpt_io.WEIGHTS)
            self.optimizer.load_state_dict(opt["optimizer"])
        if self.scaler is not None and "scaler" in opt:
            self.scaler.load_state_dict(opt["scaler"])
        self.best_val = float(state.get("best_val", math.inf))
        if restore_loader and "loader" in state:
            self.loader.load_state_dict(state["loader"])
        if restore_rng:
            torch.set_rng_state(opt["rng_cpu"])
            if self.device.type == "cuda" and "rng_cuda" in opt:
                torch.cuda.set_rng_state(opt["rng_cuda"], self.device)
        return state

    def load_adapters(self, d: Path, opt: dict) -> None:
        """The adapters and their optimizer state of adapter checkpoint `d`, into the model and
        optimizer as they are sharded now (every rank reads the small files itself)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if self.adapters is None or not adapters.is_adapter_checkpoint(d):
            raise LmforgeError(
                f"{d}: {'holds adapters' if self.adapters is None else 'holds full weights'}, but this run "
                f"trains {'every weight' if self.adapters is None else 'adapters'}; use --train.resume never"
            )
        _, tensors = adapters.read_adapters(d)
        wanted, params = self.adapters.params, dict(self.raw_model.named_parameters())
        wrong = [
            k for k, name in wanted.items()
            if k not in tensors or tuple(tensors[k].shape) != tuple(params[name].shape)
        ]
        if wrong or set(tensors) != set(wanted):
            example = (wrong or sorted(set(tensors) ^ set(wanted)))[:3]
            raise LmforgeError(f"{d}: its adapters do not match this run's ({example})")
        by_param = {name: k for k, name in wanted.items()}
        ckpt_io.fill_local_shards(
            self.raw_model, lambda name, index: tensors[by_param[name]][index], set(by_param)
        )
        try:
            full = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(self.model, list(self.optimizer), opt["optimizer"], options=full)
        except (KeyError, RuntimeError, ValueError) as e:
            raise LmforgeError(f"{d}: cannot restore the adapters' optimizer state ({e})") from None

    # ------------------------------------------------------------------ rollback

    def latest(self) -> tuple[int, Path] | None:
        """(step, dir) of the newest resumable checkpoint, or None (collective under a distributed
        run: a save in flight is published first)."""
        self.wait()
        found = resumable_checkpoints(self.root)
        return found[-1] if found else None

    def rollback(self) -> int:
        """Reload the newest checkpoint's weights and optimizer (the data stream and RNG move
        on) and return its step."""
        latest = self.latest()
        if latest is None:
            raise LmforgeError(f"{self.root} holds no checkpoint to roll back to")
        step, d = latest
        self.load(d, restore_loader=False, restore_rng=False)
        return step

    # ------------------------------------------------------------------ save

    def save(self, step: int, train_state: dict, val_loss: float | None = None) -> Path | None:
        """Write `checkpoints/step_N` atomically (collective under a distributed run), mark it
        best when `val_loss` (this step's validation loss) is the lowest yet, prune the rest.
        Returns its final path (an async save publishes it later)."""
        if not self.is_main and not self.distributed:
            return None
        is_best = val_loss is not None and val_loss < self.best_val
        if is_best:
            self.best_val = val_loss
        state = {**train_state, "step": step, "config_hash": self.config_hash}
        state["loader"] = self.loader.state_dict()
        if math.isfinite(self.best_val):
            state["best_val"] = self.best_val
        opt_state: dict[str, Any] = {"rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            opt_state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.scaler is not None:
            opt_state["scaler"] = self.scaler.state_dict()
        self.saved_step = step
        best = {"step": step, "val_loss": val_loss} if is_best else None
        if self.adapters is not None:
            return self.save_adapters(step, state, opt_state, best)
        if self.distributed:
            return self.save_sharded(step, state, opt_state, best)
        opt_state["optimizer"] = self.optimizer.state_dict()
        d = ckpt_io.write_checkpoint(
            self.root, step, self.raw_model, self.tokenizer, stage=self.stage,
            train_state=state, optimizer_state=opt_state,
        )
        self.published(best)
        return d

    def save_adapters(self, step: int, train_state: dict, opt_state: dict, best: dict | None) -> Path:
        """Collective under a distributed run: the adapters and the optimizer state, gathered whole
        (keyed by parameter name), written by rank 0 as an adapter checkpoint and published at once."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        from torch.distributed.tensor import DTensor

        self.wait()
        params = dict(self.raw_model.named_parameters())
        tensors = {}
        for k, name in self.adapters.params.items():
            p = params[name].detach()
            tensors[k] = (p.full_tensor() if isinstance(p, DTensor) else p).cpu()
        optim = get_optimizer_state_dict(
            self.model, list(self.optimizer), options=StateDictOptions(full_state_dict=True)
        )
        final = self.root / ckpt_io.step_dir_name(step)
        if self.is_main:
            opt_state["optimizer"] = _to_cpu(optim)
            ckpt_io.write_adapter_checkpoint(
                self.root, step, tensors, self.raw_model.cfg, self.tokenizer, stage=self.stage,
                info=self.adapters.info, train_state=train_state, optimizer_state=opt_state,
            )
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()  # published before any rank lists the checkpoints
        self.published(best)
        return final

    def save_sharded(self, step: int, train_state: dict, opt_state: dict, best: dict | None) -> Path:
        """Collective: every rank writes its shards to `dcp/` of a temp folder (rank 0's name),
        rank 0 the other files (optimizer.pt holds the RNG and scaler state only); published
        now, or by `wait` after an async save."""
        import torch.distributed as dist

        self.wait()
        final = self.root / ckpt_io.step_dir_name(step)
        name = [owned_temp_name(final.name) if self.is_main else ""]
        dist.broadcast_object_list(name, src=0)  # one temp folder for all ranks
        tmp = self.root / name[0]
        if self.is_main:
            ckpt_io.remove_checkpoint_leftovers(self.root)
            tmp.mkdir(parents=True)
        dist.barrier()
        try:
            future = sharded.write_shards(
                self.model, self.optimizer, tmp / sharded.DCP_DIR, async_group=self.async_group
            )
            if self.is_main:
                ckpt_io.write_checkpoint_files(
                    tmp, self.raw_model.cfg, self.tokenizer, stage=self.stage, step=step,
                    train_state=train_state, optimizer_state=opt_state,
                )
        except BaseException:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.pending = _Unpublished(future, tmp, final, best)
        if future is None:
            self.wait()
        return final

    def wait(self) -> None:
        """Collective under a distributed run: finish the save in flight, if any, and publish it."""
        if self.pending is None:
            return
        import torch.distributed as dist

        pending, self.pending = self.pending, None
        try:
            if pending.future is not None:
                pending.future.result()
            dist.barrier()  # every rank's shards are on disk
            if self.is_main:
                atomic_rename_dir(pending.tmp, pending.final)
        except BaseException:
            if self.is_main:
                shutil.rmtree(pending.tmp, ignore_errors=True)
            raise
        self.published(pending.best)

    def published(self, best: dict | None) -> None:
        """After a checkpoint is published: best.json, then pruning (rank 0)."""
        if not self.is_main:
            return
        if best is not None:
            atomic_write_json(self.root / "best.json", best)
        ckpt_io.prune_checkpoints(self.root, self.keep_last)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


@dataclass
class _Unpublished:
    future: Any  # DCP's Future of an async save, None for a finished one
    tmp: Path
    final: Path
    best: dict | None  # best.json's contents when this checkpoint is the best yet
