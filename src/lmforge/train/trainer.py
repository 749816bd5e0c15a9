"""The one training loop: every objective (pretraining, SFT, DPO, reward, RL) runs through it.

Per optimizer step: `accum` micro-batches from the loader, each `objective.loss(model, batch)`
-> (loss summed over units, unit count); the summed losses are back-propagated and the gradients
divided once by the total unit count (an exact mean over the whole batch, however it is split);
clip (the pre-clip norm is logged); the loss guard decides whether the update is applied;
AdamW with the scheduled learning rate. Around it: periodic validation (loss, bits per byte),
checkpoints (atomic, keep last K + best, exact resume), metrics.jsonl / TensorBoard / W&B, a
progress bar, and a stop at max_steps or max_minutes, whichever comes first, always followed
by a final checkpoint.

Resume (`train.resume`): "auto" continues from the latest checkpoint in out_dir when its
config hash (model, tokenizer, seed, and the train settings that change the trajectory) matches,
and otherwise starts fresh after moving the old checkpoints aside; "always" requires a matching
checkpoint; "never" starts fresh. max_steps, max_minutes and the logging / eval / checkpoint
cadence may change between a run and its resumption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoint import consolidated as ckpt_io
from lmforge.config import config_hash, to_dict
from lmforge.distributed import loss_parallel_context
from lmforge.distributed.config import ParallelConfig
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json, read_json
from lmforge.model.config import flops_per_token
from lmforge.train.config import TrainConfig
from lmforge.train.guard import LossGuard
from lmforge.train.metrics import MetricsLogger, device_peak_flops, memory_gb, truncate_metrics
from lmforge.train.objectives import nll_byte_sums
from lmforge.train.optim import build_optimizer, lr_at

# Train settings that may change when a run is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = (
    "max_steps", "max_minutes", "eval_every", "eval_tokens", "sample_every", "checkpoint_every", "keep_last",
    "log_every", "tensorboard", "wandb", "resume", "compile", "device", "samples", "sample_tokens",
    "sample_prompts", "peak_flops", "max_rollbacks", "activation_checkpointing", "init_from",
)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def grad_accum_steps(cfg: TrainConfig, dp_size: int = 1) -> int:
    """Micro-batches per optimizer step: train.grad_accum, or batch_tokens / tokens per micro-step."""
    if cfg.grad_accum > 0:
        return cfg.grad_accum
    per_step = cfg.micro_batch * cfg.seq_len * dp_size
    if cfg.batch_tokens % per_step:
        raise LmforgeError(
            f"train.batch_tokens {cfg.batch_tokens} is not a multiple of micro_batch x seq_len x dp_size = "
            f"{cfg.micro_batch} x {cfg.seq_len} x {dp_size} = {per_step}; pick batch_tokens = k x {per_step}"
        )
    return cfg.batch_tokens // per_step


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        objective: Any,
        train_loader: Any,
        cfg: TrainConfig,
        out_dir: Path,
        *,
        val_loader_fn: Callable[[], Iterable[dict[str, torch.Tensor]]] | None = None,
        tokenizer: Any = None,
        seed: int = 0,
        ctx: Any = None,
        model_cfg: Any = None,
        stage: str = "pretrain",
        parallel_cfg: ParallelConfig | None = None,
        run_name: str = "",
    ):
        from lmforge.distributed import parallelize, setup_distributed, uses_loss_parallel

        self.cfg, self.objective, self.loader = cfg, objective, train_loader
        self.out_dir, self.stage, self.seed = Path(out_dir), stage, seed
        self.val_loader_fn, self.tokenizer, self.run_name = val_loader_fn, tokenizer, run_name
        self.ctx = ctx or setup_distributed(parallel_cfg or ParallelConfig(), cfg.device)
        self.device = torch.device(self.ctx.device)
        self.model_cfg = model_cfg or ckpt_io.unwrap(model).cfg
        self.raw_model = ckpt_io.unwrap(model).to(self.device)
        parallel_cfg = parallel_cfg or ParallelConfig()
        self.loss_parallel = uses_loss_parallel(parallel_cfg, self.ctx, objective)
        # pipeline split -> TP -> activation checkpointing -> FSDP / DDP (lmforge.distributed)
        self.model = parallelize(
            self.raw_model, parallel_cfg, self.ctx,
            activation_checkpointing=cfg.activation_checkpointing, loss_parallel=self.loss_parallel,
        )
        self.pipeline = None
        if self.ctx.pp_size > 1:
            from lmforge.distributed import Pipeline

            if type(objective).__name__ != "CausalLMObjective":
                raise LmforgeError(f"pipeline parallelism supports the causal LM objective only, not {type(objective).__name__}")
            self.pipeline = Pipeline(self.model, parallel_cfg, self.ctx, cfg.micro_batch, cfg.seq_len)
        self.fwd_model = torch.compile(self.model) if cfg.compile else self.model
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.accum = grad_accum_steps(cfg, self.ctx.dp_size)
        params = getattr(objective, "parameters_to_train", None)
        params = list(params() if callable(params) else params) if params is not None else None
        self.optimizer = build_optimizer(self.raw_model, cfg, params)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.guard = LossGuard(cfg.spike_factor, cfg.max_bad_steps)
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run (for max_minutes)
        self.best_val = math.inf
        self.last_val: dict[str, float] = {}
        self.ckpt_root = self.out_dir / "checkpoints"
        self.hash = self.compute_hash()
        self.flops_per_token = flops_per_token(self.model_cfg, cfg.seq_len)
        self.peak_flops, self.peak_source = (0.0, "")
        self._token_bytes: torch.Tensor | None = None

    # ------------------------------------------------------------------ setup

    def compute_hash(self) -> str:
        train = {k: v for k, v in to_dict(self.cfg).items() if k not in RESUMABLE_CHANGES}
        payload = {
            "model": ckpt_io.model_config_dict(self.model_cfg),
            "train": train,
            "seed": self.seed,
            "stage": self.stage,
            "tokenizer": getattr(self.tokenizer, "hash", None),
            "dp_size": self.ctx.dp_size,
        }
        return config_hash(payload)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def maybe_resume(self) -> None:
        found = ckpt_io.list_checkpoints(self.ckpt_root)
        resumable = [(s, d) for s, d in found if (d / "state.json").exists()]
        mode = self.cfg.resume
        if mode == "never" or not resumable:
            if mode == "always":
                raise LmforgeError(f"train.resume is 'always' but {self.ckpt_root} holds no resumable checkpoint")
            self.start_fresh(found)
            return
        step, d = resumable[-1]
        state = read_json(d / "state.json")
        if state.get("config_hash") != self.hash:
            if mode == "always":
                raise LmforgeError(
                    f"{d}: its config differs from this run's (hash {state.get('config_hash')} vs {self.hash}); "
                    "use --train.resume never to start over"
                )
            self.say(f"{d} was trained with a different config; starting fresh")
            self.start_fresh(found)
            return
        self.load_checkpoint(d, restore_loader=True, restore_rng=True)
        truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
        self.say(f"resumed from {d} (step {self.step})")

    def start_fresh(self, found: list) -> None:
        if self.ctx.is_main and (found or (self.out_dir / "metrics.jsonl").exists()):
            stale = self.out_dir.with_name(self.out_dir.name + ".previous")
            shutil.rmtree(stale, ignore_errors=True)
            stale.mkdir(parents=True)
            for name in ("checkpoints", "metrics.jsonl", "tensorboard"):
                if (self.out_dir / name).exists():
                    shutil.move(str(self.out_dir / name), str(stale / name))
            self.say(f"moved the previous run's checkpoints and metrics to {stale}")

    def load_checkpoint(self, d: Path, restore_loader: bool, restore_rng: bool) -> None:
        from lmforge.checkpoint import sharded as distckpt

        state, opt = ckpt_io.load_training_state(d)
        if distckpt.is_sharded(d):  # written under a parallel layout: reshards onto this one
            distckpt.load_sharded(self.model, self.optimizer, d)
        elif self.ctx.distributed and (self.ctx.tp_size > 1 or self.ctx.pp_size > 1 or self.ctx.dp_size > 1):
            raise LmforgeError(f"{d}: a single-process checkpoint cannot resume a distributed run; use --train.resume never")
        else:
            ckpt_io.load_weights(self.raw_model, d / ckpt_io.WEIGHTS)
            self.optimizer.load_state_dict(opt["optimizer"])
        if self.scaler is not None and "scaler" in opt:
            self.scaler.load_state_dict(opt["scaler"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val = float(state.get("best_val", math.inf))
        self.guard.load_state_dict(state.get("guard", {}))
        if restore_loader and "loader" in state:
            self.loader.load_state_dict(state["loader"])
        if restore_rng:
            torch.set_rng_state(opt["rng_cpu"])
            if self.device.type == "cuda" and "rng_cuda" in opt:
                torch.cuda.set_rng_state(opt["rng_cuda"], self.device)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        cfg = self.cfg
        self.maybe_resume()
        self.peak_flops, self.peak_source = device_peak_flops(self.device, cfg.peak_flops)
        logger = None
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            logger = MetricsLogger(
                self.out_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb, run_name=self.run_name,
                config=to_dict(cfg),
            )
        self.logger = logger
        self.say(
            f"{self.stage}: {self.raw_model.num_params() / 1e6:.2f}M params, {self.accum} x {cfg.micro_batch} x "
            f"{cfg.seq_len} tokens/step, dtype {self.dtype}, device {self.device}, MFU peak "
            f"{self.peak_flops / 1e9:.0f} GFLOP/s ({self.peak_source})"
        )
        bar = self.progress_bar()
        saved_at = self.step if ckpt_io.list_checkpoints(self.ckpt_root) else -1
        session_start = time.time()
        elapsed_before = self.elapsed
        last: dict[str, Any] = {}
        try:
            while self.step < cfg.max_steps:
                if cfg.max_minutes > 0 and self.ctx.distributed:  # rank 0's clock decides for every rank
                    from lmforge.distributed import agree

                    self.elapsed = agree(self.elapsed, self.ctx)
                    last["step_s"] = agree(last.get("step_s", 0.0), self.ctx)
                # Stop when the next step (estimated as long as the last one) would overrun the budget.
                if cfg.max_minutes > 0 and self.elapsed + last.get("step_s", 0.0) > cfg.max_minutes * 60:
                    self.say(f"time budget of {cfg.max_minutes:g} min reached at step {self.step}")
                    break
                record = self.train_step()
                self.elapsed = elapsed_before + (time.time() - session_start)
                record["elapsed_s"] = round(self.elapsed, 3)
                last = record
                if logger:
                    logger.log(record)
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
                    if cfg.max_minutes > 0:  # the step-based ETA overestimates a time-budgeted run
                        post["budget_left"] = f"{max(cfg.max_minutes * 60 - self.elapsed, 0):.0f}s"
                    bar.set_postfix(post, refresh=False)
                if "rollback" in record:
                    continue
                if cfg.eval_every > 0 and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    self.evaluate()
                if cfg.sample_every > 0 and self.step % cfg.sample_every == 0:
                    self.print_samples()
                periodic = cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0
                if periodic and self.step not in (saved_at, cfg.max_steps):  # the final one follows the last eval
                    self.save_checkpoint()
                    saved_at = self.step
                # The eval / checkpoint time counts against the budget too.
                self.elapsed = elapsed_before + (time.time() - session_start)
            if self.val_loader_fn is not None and self.last_val.get("step") != self.step:
                self.evaluate()
            if self.step != saved_at:
                self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if logger:
                logger.close()
        final = {"step": self.step, "elapsed_s": round(self.elapsed, 2)}
        final.update({k: v for k, v in last.items() if k in ("loss", "tokens_per_s", "mfu")})
        final.update({k: v for k, v in self.last_val.items() if k != "step"})
        return final

    def train_step(self) -> dict:
        cfg = self.cfg
        progress = None
        if cfg.schedule_by == "time" and cfg.max_minutes > 0:
            progress = self.elapsed / (cfg.max_minutes * 60)
        lr = lr_at(self.step, cfg, progress) * self.guard.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        metric_sums: dict[str, float] = {}
        n_tokens = 0
        for i in range(self.accum):
            if self.ctx.distributed:  # DDP all-reduces on the last micro-batch only
                from lmforge.distributed import set_grad_sync

                set_grad_sync(self.model, i == self.accum - 1)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in self.loader.next().items()}
            n_tokens += int(batch["input_ids"].numel()) if "input_ids" in batch else 0
            if self.pipeline is not None:  # the schedule runs forward and backward over microbatches
                with self.autocast():
                    loss_sum += self.pipeline.step(batch["input_ids"], batch["labels"], denominator=1.0).float()
                count += (batch["labels"] != -100).sum().float()
                continue
            with loss_parallel_context(self.loss_parallel):  # forward and backward both
                with self.autocast():
                    out = self.objective.loss(self.fwd_model, batch)
                backward_loss = out.loss_sum if self.scaler is None else self.scaler.scale(out.loss_sum)
                backward_loss.backward()
            loss_sum += out.loss_sum.detach().float()
            count += torch.as_tensor(out.count, device=self.device, dtype=torch.float32)
            for k, v in out.metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        if self.ctx.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(loss_sum)
            torch.distributed.all_reduce(count)
            replicas = self.ctx.world_size // self.ctx.dp_size  # tp / pp peers hold the same sums
            loss_sum /= replicas
            count /= replicas
        total = max(float(count), 1.0)
        loss = float(loss_sum) / total
        # Gradients hold d(sum of losses); DDP-style averaging over ranks divides by dp_size already.
        scale = self.ctx.dp_size / total if self.ctx.dp_size > 1 else 1.0 / total
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(scale)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        if self.ctx.distributed:  # the norm over every shard, slice and stage
            from lmforge.distributed import clip_grad_norm_

            grad_norm = float(clip_grad_norm_(self.params, clip, self.ctx))
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        reason = self.guard.check(loss, grad_norm)
        record: dict[str, Any] = {"step": self.step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        if reason is None:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        else:
            record["skipped"] = reason
            self.say(f"step {self.step + 1}: update skipped ({reason})")
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        tps = n_tokens * self.ctx.dp_size / dt
        record.update(
            tokens_per_s=round(tps, 1),
            mfu=round(100 * self.flops_per_token * tps / self.ctx.world_size / self.peak_flops, 3)
            if self.peak_flops
            else None,
            step_s=round(dt, 4),
            mem_gb=round(memory_gb(self.device), 3),
        )
        record.update({k: v / self.accum for k, v in metric_sums.items()})
        if self.guard.needs_rollback:
            record["rollback"] = self.rollback()
        return record

    def rollback(self) -> int:
        """Reload the last checkpoint's weights and optimizer, halve the lr; the data stream moves on."""
        found = [(s, d) for s, d in ckpt_io.list_checkpoints(self.ckpt_root) if (d / "state.json").exists()]
        if not found:
            raise LmforgeError(
                f"{self.stage}: {self.guard.consecutive_bad} bad steps in a row at step {self.step} and no checkpoint "
                f"in {self.ckpt_root} to roll back to; lower train.lr or set train.checkpoint_every"
            )
        if self.guard.rollbacks >= self.cfg.max_rollbacks:
            raise LmforgeError(
                f"{self.stage}: training diverged: {self.guard.rollbacks} rollbacks did not help (step {self.step}); "
                "lower train.lr"
            )
        guard = dataclasses.replace(self.guard)
        step, d = found[-1]
        self.load_checkpoint(d, restore_loader=False, restore_rng=False)
        self.guard = guard
        self.guard.rolled_back()
        self.step = step
        self.say(f"rolled back to {d} (step {step}); learning rate scale now {self.guard.lr_scale:g}")
        return step

    # ------------------------------------------------------------------ eval, checkpoints, samples

    def token_bytes(self) -> torch.Tensor | None:
        if self._token_bytes is None and self.tokenizer is not None and hasattr(self.tokenizer, "token_bytes"):
            self._token_bytes = torch.tensor(self.tokenizer.token_bytes(), dtype=torch.float64, device=self.device)
        return self._token_bytes

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (mean over scored units) and, for LM objectives, bits per byte."""
        if self.val_loader_fn is None:
            return {}
        self.model.eval()
        # [nll, scored units, nll of tokens with bytes, bytes] (objectives.nll_byte_sums)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        token_bytes = self.token_bytes()
        per_token = getattr(self.objective, "token_nll", None)
        for batch in self.val_loader_fn():
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if self.pipeline is not None:  # a forward-only schedule; the last stage scores
                sums += self.pipeline.eval_sums(batch["input_ids"], batch["labels"], token_bytes)
                continue
            with self.autocast(), loss_parallel_context(self.loss_parallel):
                if per_token is not None:
                    nll, labels = per_token(self.fwd_model, batch)
                    sums += nll_byte_sums(nll, labels, token_bytes)
                else:
                    out = self.objective.loss(self.fwd_model, batch)
                    sums[0] += out.loss_sum.double()
                    sums[1] += float(out.count)
        if self.ctx.dp_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)  # tensor and pipeline peers hold equal sums: ratios stay exact
        nll_sum, units, bpb_nats, n_bytes = sums
        result: dict[str, Any] = {"step": self.step, "val_loss": float(nll_sum / units.clamp(min=1))}
        if n_bytes > 0:
            result["val_bpb"] = float(bpb_nats / (math.log(2) * n_bytes))
        self.last_val = result
        if self.logger:
            self.logger.log(result)
        bpb = f", val bpb {result['val_bpb']:.4f}" if "val_bpb" in result else ""
        self.say(f"step {self.step}: val loss {result['val_loss']:.4f}{bpb}")
        self.model.train()
        return result

    def save_checkpoint(self) -> Path | None:
        if not self.ctx.is_main and not self.ctx.distributed:
            return None
        val = self.last_val.get("val_loss") if self.last_val.get("step") == self.step else None
        is_best = val is not None and val < self.best_val
        if is_best:
            self.best_val = val
        state = {
            "step": self.step,
            "config_hash": self.hash,
            "loader": self.loader.state_dict(),
            "guard": self.guard.state_dict(),
            "elapsed": self.elapsed,
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "val": {k: v for k, v in self.last_val.items() if self.last_val.get("step") == self.step},
            "seed": self.seed,
        }
        if state["best_val"] is None:
            state.pop("best_val")
        opt_state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            opt_state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.scaler is not None:
            opt_state["scaler"] = self.scaler.state_dict()
        if self.ctx.distributed:  # every rank writes its shards (DCP); rank 0 the rest
            from lmforge.checkpoint import sharded as distckpt

            opt_state.pop("optimizer")  # in dcp/, sharded
            d = distckpt.write_sharded_checkpoint(
                self.ckpt_root, self.step, self.model, self.optimizer, self.tokenizer, stage=self.stage,
                train_state=state, optimizer_state=opt_state,
            )
            if not self.ctx.is_main:
                return d
        else:
            d = ckpt_io.write_checkpoint(
                self.ckpt_root, self.step, self.raw_model, self.tokenizer, stage=self.stage,
                train_state=state, optimizer_state=opt_state,
            )
        if is_best:
            atomic_write_json(self.ckpt_root / "best.json", {"step": self.step, "val_loss": val})
        ckpt_io.prune_checkpoints(self.ckpt_root, self.cfg.keep_last)
        return d

    def print_samples(self) -> None:
        if not self.ctx.is_main or self.tokenizer is None or self.ctx.distributed:  # a lone rank's forward would hang
            return
        for prompt, text in sample_texts(self.raw_model, self.tokenizer, self.cfg, seed=self.seed):
            self.say(f"sample @ step {self.step}: {prompt!r} -> {text!r}")
        self.model.train()

    # ------------------------------------------------------------------ console

    def progress_bar(self):
        if not self.ctx.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.cfg.max_steps, initial=self.step, desc=self.stage, unit="step", dynamic_ncols=True,
            mininterval=1.0,
        )

    def say(self, text: str) -> None:
        if self.ctx.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"[lmforge] {text}")


def sample_texts(model: torch.nn.Module, tokenizer: Any, cfg: TrainConfig, seed: int) -> list[tuple[str, str]]:
    """A few generations from cfg.sample_prompts (empty when lmforge.inference is not available)."""
    try:
        from lmforge.inference import generate
    except ImportError:
        return []
    model.eval()
    gen = functools.partial(generate, model, tokenizer, max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=50)
    with torch.random.fork_rng(devices=[]):  # sampling must not shift the training RNG stream
        return [(p, gen(p, seed=seed + i)) for i, p in enumerate(cfg.sample_prompts[: max(cfg.samples, 0)])]
