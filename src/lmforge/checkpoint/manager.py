"""The checkpoint manager of a training run: resume, save, roll back, prune (as torchtitan's
`CheckpointManager`), so that the training loop only says when.

It owns the run's `checkpoints/` folder and everything a checkpoint restores besides the
trainer's own counters: weights (consolidated, or sharded with DCP under a parallel layout),
optimizer, gradient scaler, RNG and data loader state, and which checkpoint is the best by
validation loss (`best.json`; pruning keeps the last K and that one). The trainer's counters
(step, elapsed time, loss guard) travel in `state.json` as the dict it hands to `save` and
gets back from `resume`.

Resume modes: "auto" continues from the latest checkpoint when its config hash matches and
otherwise starts fresh after moving the old run aside (to `<out_dir>.previous`); "always"
requires a matching checkpoint; "never" starts fresh.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoint import consolidated as ckpt_io
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json, read_json


def resumable_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the checkpoints under `ckpt_root` that hold training state, oldest first."""
    return [(s, d) for s, d in ckpt_io.list_checkpoints(ckpt_root) if (d / "state.json").exists()]


class CheckpointManager:
    """Checkpoints of the run in `out_dir` (under `out_dir/checkpoints`).

    `model` is the module as trained (possibly sharded / wrapped), `raw_model` the plain
    Transformer beneath it; `loader` has `state_dict()` / `load_state_dict()`. `distributed`:
    every rank writes its shards (DCP) and rank 0 (`is_main`) the rest. `run_files` are the
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
        run_files: Sequence[str] = (),
        say: Callable[[str], None] = print,
    ):
        self.out_dir, self.root = Path(out_dir), Path(out_dir) / "checkpoints"
        self.model, self.raw_model, self.optimizer, self.scaler = model, raw_model, optimizer, scaler
        self.loader, self.tokenizer, self.stage, self.config_hash = loader, tokenizer, stage, config_hash
        self.keep_last, self.device, self.distributed, self.is_main = keep_last, device, distributed, is_main
        self.run_files, self.say = tuple(run_files), say
        self.best_val = math.inf
        self.saved_step = -1  # the step of the newest checkpoint on disk (-1: none)

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
            self.say(f"{d} was trained with a different config; starting fresh")
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
        shutil.rmtree(stale, ignore_errors=True)
        stale.mkdir(parents=True)
        for name in ("checkpoints", *self.run_files):
            if (self.out_dir / name).exists():
                shutil.move(str(self.out_dir / name), str(stale / name))
        self.say(f"moved the previous run's checkpoints and metrics to {stale}")

    def load(self, d: Path, *, restore_loader: bool, restore_rng: bool) -> dict:
        """Weights, optimizer and scaler from checkpoint `d` (and the loader / RNG state when
        asked); returns its state.json."""
        from lmforge.checkpoint import sharded

        state, opt = ckpt_io.load_training_state(d)
        if sharded.is_sharded(d):  # written under a parallel layout: reshards onto this one
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

    # ------------------------------------------------------------------ rollback

    def latest(self) -> tuple[int, Path] | None:
        """(step, dir) of the newest resumable checkpoint, or None."""
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
        best when `val_loss` (this step's validation loss) is the lowest yet, prune the rest."""
        if not self.is_main and not self.distributed:
            return None
        is_best = val_loss is not None and val_loss < self.best_val
        if is_best:
            self.best_val = val_loss
        state = {**train_state, "step": step, "config_hash": self.config_hash}
        state["loader"] = self.loader.state_dict()
        if math.isfinite(self.best_val):
            state["best_val"] = self.best_val
        opt_state: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        opt_state["rng_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            opt_state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.scaler is not None:
            opt_state["scaler"] = self.scaler.state_dict()
        if self.distributed:  # every rank writes its shards (DCP); rank 0 the rest
            from lmforge.checkpoint import sharded

            opt_state.pop("optimizer")  # in dcp/, sharded
            d = sharded.write_sharded_checkpoint(
                self.root, step, self.model, self.optimizer, self.tokenizer, stage=self.stage,
                train_state=state, optimizer_state=opt_state,
            )
        else:
            d = ckpt_io.write_checkpoint(
                self.root, step, self.raw_model, self.tokenizer, stage=self.stage,
                train_state=state, optimizer_state=opt_state,
            )
        self.saved_step = step
        if self.is_main:
            if is_best:
                atomic_write_json(self.root / "best.json", {"step": step, "val_loss": val_loss})
            ckpt_io.prune_checkpoints(self.root, self.keep_last)
        return d
