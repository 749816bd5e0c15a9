"""The one training loop: every objective (pretraining, SFT, DPO, reward, RL) runs through it.

Per optimizer step: `accum` micro-batches from the loader, each `objective.loss(model, batch)`
-> (loss summed over units, unit count); the summed losses are back-propagated and the gradients
divided once by the total unit count (an exact mean over the whole batch, however it is split);
clip (the pre-clip norm is logged); the loss guard decides whether the update is applied;
AdamW with the scheduled learning rate. Around it: periodic validation (loss, bits per byte),
checkpoints, metrics.jsonl / TensorBoard / W&B, a progress bar, and a stop at max_steps or
max_minutes, whichever comes first, always followed by a final checkpoint.

What the loop asks of an objective is `lmforge.train.objectives.Objective`. Resume, save and
rollback are the `CheckpointManager`'s (lmforge.checkpoint.manager); the trainer's part of a
checkpoint is its counters (step, elapsed time, loss guard) and the config hash that decides
whether a checkpoint may be resumed: model, tokenizer, seed, the global batch, the train
settings that change the trajectory (max_steps, max_minutes, the logging / eval / checkpoint
cadence, and how the global batch is split over ranks and micro-batches may change between a run
and its resumption) and the caller's `data_key`, what the run trains on (a stage's data and
objective settings, its token shards, its starting weights), so that a checkpoint trained on
other data is never resumed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoint import consolidated as ckpt_io
from lmforge.checkpoint.manager import CheckpointManager
from lmforge.config import config_hash, settings_dict, to_dict
from lmforge.distributed import loss_parallel_context
from lmforge.distributed.config import ParallelConfig
from lmforge.errors import LmforgeError
from lmforge.model.config import flops_per_token
from lmforge.model.loss import nll_byte_sums, scored_count
from lmforge.train.config import TrainConfig
from lmforge.train.guard import LossGuard
from lmforge.train.metrics import MetricsLogger, device_peak_flops, memory_gb, truncate_metrics
from lmforge.train.objectives import Objective
from lmforge.train.optim import build_optimizer, lr_at

# Train settings that may change when a run is resumed (they do not change the trajectory); the
# logging-only ones (lmforge.config.logging_only) are left out of every hash already.
RESUMABLE_CHANGES = (
    "max_steps", "max_minutes", "eval_every", "eval_tokens", "sample_every", "checkpoint_every", "keep_last",
    "resume", "compile", "device", "samples", "sample_tokens",
    "sample_prompts", "peak_flops", "max_rollbacks", "activation_checkpointing", "init_from",
    "async_checkpoint", "doc_mask_kernel",
)
# How the global batch is split (per device, accumulated) does not change the trajectory either:
# the hash holds the global batch in sequences instead, so a run resumes on another number of ranks.
BATCH_SPLIT = ("micro_batch", "grad_accum")
RUN_FILES = ("metrics.jsonl", "tensorboard")  # a run's outputs beside its checkpoints


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
        objective: Objective,
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
        parallelized: bool = False,
        data_key: str = "",
    ):
        """`parallelized`: the model comes from `build_parallel_model`, already sharded on its device
        with the plan for this objective (activation checkpointing and loss parallelism included);
        otherwise the trainer moves it to the device and applies the plan itself. `data_key`: a hash
        of what the run trains on besides the train settings, part of the resume check."""
        from lmforge.distributed import Pipeline, parallelize, setup_distributed, uses_loss_parallel

        self.cfg, self.objective, self.loader = cfg, objective, train_loader
        self.out_dir, self.stage, self.seed = Path(out_dir), stage, seed
        self.val_loader_fn, self.tokenizer, self.run_name = val_loader_fn, tokenizer, run_name
        self.data_key = data_key
        parallel_cfg = parallel_cfg or ParallelConfig()
        self.ctx = ctx or setup_distributed(parallel_cfg, cfg.device)
        if self.ctx.pp_size > 1 and objective.logits_loss is None:
            raise LmforgeError(
                f"{stage}: pipeline parallelism (parallel.pp {self.ctx.pp_size}) needs a loss that the last "
                "stage computes from its logits and the labels alone (pretraining, SFT); this objective "
                "needs more (both halves of a preference pair, or per-row advantages): use parallel.pp 1"
            )
        self.device = torch.device(self.ctx.device)
        self.model_cfg = model_cfg or ckpt_io.unwrap(model).cfg
        self.raw_model = ckpt_io.unwrap(model) if parallelized else ckpt_io.unwrap(model).to(self.device)
        self.loss_parallel = uses_loss_parallel(parallel_cfg, self.ctx, objective.takes_sharded_logits)
        # pipeline split -> TP -> activation checkpointing -> FSDP / DDP (lmforge.distributed)
        self.model = model if parallelized else parallelize(
            self.raw_model, parallel_cfg, self.ctx,
            activation_checkpointing=cfg.activation_checkpointing, loss_parallel=self.loss_parallel,
        )
        self.pipeline = None
        if self.ctx.pp_size > 1:  # the schedule runs forward, the objective's loss and backward
            self.pipeline = Pipeline(
                self.model, parallel_cfg, self.ctx, cfg.micro_batch, cfg.seq_len, objective.logits_loss,
                self.loss_parallel,
            )
        self.fwd_model = torch.compile(self.model) if cfg.compile else self.model
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.accum = grad_accum_steps(cfg, self.ctx.dp_size)
        params = objective.parameters_to_train(self.raw_model)
        self.optimizer = build_optimizer(self.raw_model, cfg, None if params is None else list(params))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.guard = LossGuard(cfg.spike_factor, cfg.max_bad_steps)
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run (for max_minutes)
        self.last_val: dict[str, float] = {}
        self.hash = self.compute_hash()
        self.checkpoints = CheckpointManager(
            self.out_dir, model=self.model, raw_model=self.raw_model, optimizer=self.optimizer,
            loader=self.loader, tokenizer=tokenizer, stage=stage, config_hash=self.hash,
            keep_last=cfg.keep_last, device=self.device, scaler=self.scaler, distributed=self.ctx.distributed,
            is_main=self.ctx.is_main, async_save=cfg.async_checkpoint, run_files=RUN_FILES, say=self.say,
        )
        self.flops_per_token = flops_per_token(self.model_cfg, cfg.seq_len)
        self.peak_flops, self.peak_source = (0.0, "")
        self.logger: MetricsLogger | None = None
        self._token_bytes: torch.Tensor | None = None

    # ------------------------------------------------------------------ setup

    def compute_hash(self) -> str:
        skipped = (*RESUMABLE_CHANGES, *BATCH_SPLIT)
        train = {k: v for k, v in settings_dict(self.cfg).items() if k not in skipped}
        payload = {
            "model": ckpt_io.model_config_dict(self.model_cfg),
            "train": train,
            "seed": self.seed,
            "stage": self.stage,
            "tokenizer": getattr(self.tokenizer, "hash", None),
            "global_batch": self.accum * self.cfg.micro_batch * self.ctx.dp_size,
        }
        if self.data_key:  # absent, the hash stays that of a run without one
            payload["data"] = self.data_key
        return config_hash(payload)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def resume(self) -> None:
        """Continue from the latest matching checkpoint (train.resume), or start fresh."""
        state = self.checkpoints.resume(self.cfg.resume)
        if state is None:
            return
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.guard.load_state_dict(state.get("guard", {}))
        truncate_metrics(self.out_dir / "metrics.jsonl", self.step)

    def open_logs(self) -> None:
        self.peak_flops, self.peak_source = device_peak_flops(self.device, self.cfg.peak_flops)
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.logger = MetricsLogger(
                self.out_dir, tensorboard=self.cfg.tensorboard, wandb=self.cfg.wandb, run_name=self.run_name,
                config=to_dict(self.cfg),
            )
        cfg = self.cfg
        self.say(
            f"{self.stage}: {self.raw_model.num_params() / 1e6:.2f}M params, "
            f"{self.accum} x {cfg.micro_batch} x {cfg.seq_len} tokens/step, dtype {self.dtype}, "
            f"device {self.device}, MFU peak {self.peak_flops / 1e9:.0f} GFLOP/s ({self.peak_source})"
        )
        if self.ctx.tp_size > 1:
            how = "sharded over the vocabulary (loss parallelism)" if self.loss_parallel else "gathered whole"
            self.say(f"{self.stage}: tensor parallel {self.ctx.tp_size}, the LM head's logits are {how}")

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        """Train until max_steps or the time budget; validate and checkpoint on the way and at the end."""
        cfg = self.cfg
        self.resume()
        self.open_logs()
        bar = self.progress_bar()
        session_start, elapsed_before = time.time(), self.elapsed
        last: dict[str, Any] = {}
        try:
            while self.step < cfg.max_steps and not self.out_of_time(last):
                record = self.train_step()
                self.elapsed = elapsed_before + (time.time() - session_start)
                record["elapsed_s"] = round(self.elapsed, 3)
                last = record
                self.report(record, bar)
                if "rollback" not in record:
                    self.periodic_work()
                    # The eval / checkpoint time counts against the budget too.
                    self.elapsed = elapsed_before + (time.time() - session_start)
            if self.val_loader_fn is not None and self.last_val.get("step") != self.step:
                self.evaluate()
            if self.step != self.checkpoints.saved_step:
                self.save_checkpoint()
            self.checkpoints.wait()  # an async save in flight is published before the run ends
        finally:
            if bar is not None:
                bar.close()
            if self.logger:
                self.logger.close()
        final = {"step": self.step, "elapsed_s": round(self.elapsed, 2)}
        final.update({k: v for k, v in last.items() if k in ("loss", "tokens_per_s", "mfu")})
        final.update({k: v for k, v in self.last_val.items() if k != "step"})
        return final

    def out_of_time(self, last: dict[str, Any]) -> bool:
        """Whether the next step (estimated as long as the last one) would overrun max_minutes."""
        cfg = self.cfg
        if cfg.max_minutes <= 0:
            return False
        step_s = last.get("step_s", 0.0)
        if self.ctx.distributed:  # rank 0's clock decides for every rank
            from lmforge.distributed import agree

            self.elapsed = agree(self.elapsed, self.ctx)
            step_s = agree(step_s, self.ctx)
        if self.elapsed + step_s > cfg.max_minutes * 60:
            self.say(f"time budget of {cfg.max_minutes:g} min reached at step {self.step}")
            return True
        return False

    def report(self, record: dict[str, Any], bar) -> None:
        # a skipped step or a rollback is always recorded, whatever log_every says
        if self.logger and (self.step % self.cfg.log_every == 0 or {"skipped", "rollback"} & record.keys()):
            self.logger.log(record)
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
            if self.cfg.max_minutes > 0:  # the step-based ETA overestimates a time-budgeted run
                post["budget_left"] = f"{max(self.cfg.max_minutes * 60 - self.elapsed, 0):.0f}s"
            bar.set_postfix(post, refresh=False)

    def periodic_work(self) -> None:
        """Validation, samples and checkpoints at their cadence (the final ones follow the loop)."""
        cfg, step = self.cfg, self.step
        if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.max_steps:
            self.evaluate()
        if cfg.sample_every > 0 and step % cfg.sample_every == 0:
            self.print_samples()
        periodic = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
        if periodic and step not in (self.checkpoints.saved_step, cfg.max_steps):
            self.save_checkpoint()

    def train_step(self) -> dict:
        """One optimizer step: the gradients of `accum` micro-batches, their exact mean, clip,
        the guard's verdict, the update."""
        cfg = self.cfg
        progress = None
        if cfg.schedule_by == "time" and cfg.max_minutes > 0:
            progress = self.elapsed / (cfg.max_minutes * 60)
        lr = lr_at(self.step, cfg, progress) * self.guard.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        t0 = time.perf_counter()
        loss_sum, count, n_tokens, metric_sums = self.accumulate_gradients()
        loss_sum, count, metrics = self.reduce_sums(loss_sum, count, metric_sums)
        total = max(count, 1.0)
        loss = loss_sum / total
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
        record.update(metrics)
        if self.guard.needs_rollback:
            record["rollback"] = self.rollback()
        return record

    def reduce_sums(
        self, loss_sum: torch.Tensor, count: torch.Tensor, metric_sums: dict[str, torch.Tensor]
    ) -> tuple[float, float, dict[str, float]]:
        """(summed loss, units, metrics) of the whole step from this rank's sums: one all_reduce of
        one packed tensor when distributed, one copy to the host either way. A metric is its mean
        over all micro-batches of all data-parallel ranks, so what is logged does not depend on how
        the global batch is split; tensor and pipeline peers hold the same sums (divided out).
        Every rank reports the same metric names (an objective's metrics do not depend on the data)."""
        names = sorted(metric_sums)
        packed = torch.stack([loss_sum, count, *(metric_sums[k] for k in names)]).double()
        if self.ctx.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
            packed /= self.ctx.world_size // self.ctx.dp_size
        loss_total, units, *values = packed.tolist()
        micro_batches = self.accum * self.ctx.dp_size
        return loss_total, units, {k: v / micro_batches for k, v in zip(names, values)}

    def accumulate_gradients(self) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, torch.Tensor]]:
        """Forward and backward over this step's micro-batches: (summed loss, units, tokens,
        summed metrics) of this rank; the gradients hold the summed loss's."""
        loss_sum = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        n_tokens = 0
        for i in range(self.accum):
            if self.ctx.distributed:  # DDP all-reduces on the last micro-batch only
                from lmforge.distributed import set_grad_sync

                set_grad_sync(self.model, i == self.accum - 1)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in self.loader.next().items()}
            n_tokens += int(batch["input_ids"].numel()) if "input_ids" in batch else 0
            if self.pipeline is not None:  # the schedule runs forward, loss and backward over microbatches
                with self.autocast():
                    inputs = self.objective.model_inputs(batch)
                    loss_sum += self.pipeline.step(batch["input_ids"], batch["labels"], 1.0, inputs).float()
                count += scored_count(batch["labels"]).float()
                continue
            with loss_parallel_context(self.loss_parallel):  # forward and backward both
                with self.autocast():
                    out = self.objective.loss(self.fwd_model, batch)
                backward_loss = out.loss_sum if self.scaler is None else self.scaler.scale(out.loss_sum)
                backward_loss.backward()
            loss_sum += out.loss_sum.detach().float()
            count += torch.as_tensor(out.count, device=self.device, dtype=torch.float32)
            for k, v in out.metrics.items():  # kept on the device: no host sync per micro-batch
                v = torch.as_tensor(v, device=self.device, dtype=torch.float32).detach()
                metric_sums[k] = metric_sums[k] + v if k in metric_sums else v
        return loss_sum, count, n_tokens, metric_sums

    def rollback(self) -> int:
        """Back to the last checkpoint's weights and optimizer at half the lr; the data stream moves on."""
        if self.checkpoints.latest() is None:
            raise LmforgeError(
                f"{self.stage}: {self.guard.consecutive_bad} bad steps in a row at step {self.step} and no "
                f"checkpoint in {self.checkpoints.root} to roll back to; lower train.lr or set "
                "train.checkpoint_every"
            )
        if self.guard.rollbacks >= self.cfg.max_rollbacks:
            raise LmforgeError(
                f"{self.stage}: training diverged: {self.guard.rollbacks} rollbacks did not help "
                f"(step {self.step}); lower train.lr"
            )
        self.step = self.checkpoints.rollback()
        self.guard.rolled_back()
        self.say(f"rolled back to step {self.step}; learning rate scale now {self.guard.lr_scale:g}")
        return self.step

    # ------------------------------------------------------------------ eval, checkpoints, samples

    def token_bytes(self) -> torch.Tensor | None:
        if self._token_bytes is None and hasattr(self.tokenizer, "token_bytes"):
            self._token_bytes = torch.tensor(
                self.tokenizer.token_bytes(), dtype=torch.float64, device=self.device
            )
        return self._token_bytes

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (mean over scored units) and, for LM objectives, bits per byte."""
        if self.val_loader_fn is None:
            return {}
        self.model.eval()
        # [nll, scored units, nll of tokens with bytes, bytes] (lmforge.model.loss.nll_byte_sums)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        token_bytes = self.token_bytes()
        for batch in self.val_loader_fn():
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if self.pipeline is not None:  # a forward-only schedule; the last stage scores
                inputs = self.objective.model_inputs(batch)
                sums += self.pipeline.eval_sums(batch["input_ids"], batch["labels"], token_bytes, inputs)
                continue
            with self.autocast(), loss_parallel_context(self.loss_parallel):
                scored = self.objective.token_nll(self.fwd_model, batch)
                if scored is not None:
                    sums += nll_byte_sums(*scored, token_bytes)
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
        current_val = self.last_val.get("step") == self.step
        state = {
            "guard": self.guard.state_dict(),
            "elapsed": self.elapsed,
            "val": {k: v for k, v in self.last_val.items() if current_val},
            "seed": self.seed,
        }
        return self.checkpoints.save(self.step, state, self.last_val.get("val_loss") if current_val else None)

    def print_samples(self) -> None:
        # under more than one process a lone rank's forward would hang
        if not self.ctx.is_main or self.tokenizer is None or self.ctx.distributed:
            return
        samples = sample_texts(self.raw_model, self.tokenizer, self.cfg, seed=self.seed)
        for prompt, text in samples:
            self.say(f"sample @ step {self.step}: {prompt!r} -> {text!r}")
        if self.logger:
            self.logger.log_samples(self.step, samples)
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


def sample_texts(
    model: torch.nn.Module, tokenizer: Any, cfg: TrainConfig, seed: int
) -> list[tuple[str, str]]:
    """A few generations from cfg.sample_prompts (empty when lmforge.inference is not available)."""
    try:
        from lmforge.inference import generate
    except ImportError:
        return []
    model.eval()
    gen = functools.partial(
        generate, model, tokenizer, max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=50
    )
    with torch.random.fork_rng(devices=[]):  # sampling must not shift the training RNG stream
        return [(p, gen(p, seed=seed + i)) for i, p in enumerate(cfg.sample_prompts[: max(cfg.samples, 0)])]
