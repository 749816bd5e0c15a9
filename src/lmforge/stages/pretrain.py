"""The pretrain stage: tokenizer + token shards of a run directory -> RUN_DIR/pretrain/checkpoints.

Called by `lmforge run` (stage "pretrain") and by `lmforge pretrain`. Reads RUN_DIR/tokenizer
and RUN_DIR/tokens/{train,val}.bin, sizes the model's vocabulary from the tokenizer, trains
with the one Trainer, then prints the validation bits per byte and a few samples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.recipe import Recipe


def model_config(recipe: Recipe, vocab_size: int):
    """The recipe's model section with the tokenizer's vocabulary, checked against train.seq_len."""
    model_cfg = dataclasses.replace(recipe.model, vocab_size=vocab_size)
    if recipe.train.seq_len > model_cfg.max_seq_len:
        raise LmforgeError(
            f"train.seq_len {recipe.train.seq_len} exceeds model.max_seq_len {model_cfg.max_seq_len}; "
            "raise model.max_seq_len or lower train.seq_len"
        )
    return model_cfg


def build_model(recipe: Recipe, vocab_size: int, seed: int):
    """A freshly initialised single-process Transformer for the recipe's model section (seeded)."""
    from lmforge.distributed import DistContext, ParallelConfig, build_parallel_model

    model_cfg = model_config(recipe, vocab_size)
    return build_parallel_model(model_cfg, ParallelConfig(), DistContext(), seed=seed), model_cfg


def pretrain_stage(recipe: Recipe, run_dir: Path, data_key: str = "") -> dict:
    """`data_key`: what the recipe feeds this stage (lmforge.run.data_key); the trainer's resume
    check holds it and the token shards' meta.json, so new data trains from scratch."""
    import torch

    from lmforge.checkpoint.consolidated import resolve_checkpoint
    from lmforge.config import config_hash
    from lmforge.distributed import build_parallel_model, setup_distributed, uses_loss_parallel
    from lmforge.shards import check_tokenizer, load_tokens, read_meta
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.data import PretrainLoader, doc_mask_kernel, val_batches
    from lmforge.train.objectives import CausalLMObjective
    from lmforge.train.trainer import Trainer, sample_texts

    run_dir = Path(run_dir)
    tok_dir, tokens_dir = run_dir / "tokenizer", run_dir / "tokens"
    for needed, stage in ((tok_dir, "tokenizer"), (tokens_dir, "tokenize")):
        if not needed.exists():
            raise LmforgeError(
                f"{needed} not found: run the {stage} stage first (lmforge run RECIPE --stages {stage})"
            )
    tokenizer = Tokenizer.load(tok_dir)
    check_tokenizer(tokens_dir, tokenizer)
    train_tokens = load_tokens(tokens_dir, "train")
    val_tokens = load_tokens(tokens_dir, "val")
    cfg = recipe.train
    ctx = setup_distributed(recipe.parallel, cfg.device)
    model_cfg = model_config(recipe, tokenizer.vocab_size)
    objective = CausalLMObjective()
    # before the build, so a kernel that cannot run here fails at once
    kernel = doc_mask_kernel(ctx.device, choice=cfg.doc_mask_kernel, pipeline=ctx.pp_size > 1,
                             dropout=model_cfg.dropout) if cfg.doc_mask else "sdpa"
    # on the meta device, the plan applied, then only this rank's shards initialised or loaded
    model = build_parallel_model(
        model_cfg, recipe.parallel, ctx, seed=recipe.seed,
        init_from=resolve_checkpoint(cfg.init_from) if cfg.init_from else None,
        activation_checkpointing=cfg.activation_checkpointing,
        loss_parallel=uses_loss_parallel(recipe.parallel, ctx, objective.takes_sharded_logits),
    )
    loader = PretrainLoader(train_tokens, cfg.micro_batch, cfg.seq_len, recipe.seed, ctx.dp_rank, ctx.dp_size,
                            window_start=cfg.window_start, doc_mask=cfg.doc_mask, eos_id=tokenizer.eos_id,
                            doc_mask_kernel=kernel)
    val_fn = functools.partial(val_batches, val_tokens, cfg.micro_batch, cfg.seq_len, cfg.eval_tokens,
                               ctx.dp_rank, ctx.dp_size)
    torch.manual_seed(recipe.seed)
    trainer = Trainer(
        model, objective, loader, cfg, run_dir / "pretrain", val_loader_fn=val_fn, tokenizer=tokenizer,
        seed=recipe.seed, ctx=ctx, model_cfg=model_cfg, stage="pretrain", parallel_cfg=recipe.parallel,
        run_name=recipe.name, parallelized=True,
        data_key=config_hash({"run": data_key, "tokens": read_meta(tokens_dir)}),
    )
    result = trainer.fit()
    if ctx.is_main:
        summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        print(f"[lmforge] pretrain finished: {summary}", flush=True)
        if "val_bpb" in result:
            print(f"[lmforge] validation bits per byte: {result['val_bpb']:.4f}", flush=True)
        # under torchrun a forward on rank 0 alone would wait forever for the other shards
        samples = []
        if cfg.samples > 0 and not ctx.distributed:
            samples = sample_texts(trainer.raw_model, tokenizer, cfg, seed=recipe.seed)
        for prompt, text in samples:
            print(f"[lmforge] sample: {json.dumps(prompt + text)}", flush=True)
    return result
