"""The trainer's parts in-process: accumulation is an exact mean, the schedules, AdamW groups,
the deterministic loader, the NaN / spike guard (skip, then roll back with a lower lr), bpb."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.data import PretrainLoader, val_batches
from lmforge.train.objectives import CausalLMObjective, LossOutput
from lmforge.train.optim import lr_at, param_groups
from lmforge.train.trainer import Trainer, grad_accum_steps

V = 97


def tiny_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=V, n_layer=2, d_model=32, n_head=4, max_seq_len=16, **kw))


def tokens(n: int = 5000, seed: int = 0) -> np.ndarray:
    # A learnable stream: mostly "next = prev + 1 mod V" with some noise.
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=np.uint16)
    for i in range(1, n):
        out[i] = (out[i - 1] + 1) % V if rng.random() < 0.9 else rng.integers(V)
    return out


def train_cfg(**kw) -> TrainConfig:
    base = dict(
        max_steps=20,
        batch_tokens=128,
        micro_batch=4,
        seq_len=16,
        lr=1e-2,
        warmup_steps=2,
        eval_every=0,
        checkpoint_every=0,
        samples=0,
        eval_tokens=256,
    )
    base.update(kw)
    return TrainConfig(**base)


def records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_grad_accumulation_is_an_exact_mean_over_the_whole_batch():
    """One step over 8 sequences == one step over 2 micro-batches of 4 (ragged label masks too)."""
    data = torch.from_numpy(tokens(200).astype(np.int64))[: 8 * 17].view(8, 17)
    labels = data[:, 1:].clone()
    labels[:3, :10] = -100  # uneven unit counts per micro-batch: a mean of means would differ
    batch = {"input_ids": data[:, :-1], "labels": labels}

    class Fixed:
        def __init__(self, parts):
            self.parts, self.i = parts, 0

        def next(self):
            self.i += 1
            return self.parts[(self.i - 1) % len(self.parts)]

        def state_dict(self):
            return {}

    grads = []
    for parts, micro in (
        ([batch], 8),
        ([{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}], 4),
    ):
        model = tiny_model()
        cfg = train_cfg(
            micro_batch=micro, batch_tokens=8 * 16, max_steps=1, lr=0.0, warmup_steps=0, grad_clip=0.0
        )
        t = Trainer(model, CausalLMObjective(), Fixed(parts), cfg, out_dir=Path("/nonexistent"))
        t.optimizer.step = lambda: None  # keep the gradients to compare them
        t.optimizer.zero_grad = lambda set_to_none=True: None
        rec = t.train_step()
        grads.append((rec["loss"], torch.cat([p.grad.flatten() for p in t.params])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-7, rtol=1e-5)
    # and the mean is the plain token mean of the whole batch
    model = tiny_model()
    ref = torch.nn.functional.cross_entropy(model(batch["input_ids"]).flatten(0, 1), labels.flatten())
    assert grads[0][0] == pytest.approx(float(ref.detach()), rel=1e-6)


def test_grad_accum_must_be_integral():
    assert grad_accum_steps(train_cfg(batch_tokens=256, micro_batch=4, seq_len=16)) == 4
    with pytest.raises(LmforgeError, match="not a multiple"):
        grad_accum_steps(train_cfg(batch_tokens=100, micro_batch=4, seq_len=16))


def test_schedules():
    cfg = train_cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(55, cfg) == pytest.approx(0.55)  # cosine midpoint: (1 + 0.1) / 2
    assert lr_at(20, cfg, progress=0.55) == pytest.approx(0.55)  # schedule_by time: the clock is the budget
    assert lr_at(20, cfg, progress=1.5) == pytest.approx(0.1)
    wsd = train_cfg(
        max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2
    )
    assert [lr_at(s, wsd) for s in (50, 79, 80, 90, 100)] == pytest.approx([1, 1, 1, 0.5, 0])
    const = train_cfg(max_steps=100, warmup_steps=0, lr=0.3, schedule="constant")
    assert lr_at(0, const) == lr_at(99, const) == 0.3


def test_no_weight_decay_on_norms_embeddings_and_biases():
    for arch in ("llama", "gpt2"):
        model = tiny_model(arch=arch)
        decay, no_decay = param_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        assert {names[id(p)] for p in decay["params"]} == {
            n
            for n, p in model.named_parameters()
            if p.dim() == 2 and "emb" not in n and n != "lm_head.weight"
        }
        assert all(
            ("norm" in names[id(p)] or "emb" in names[id(p)] or "bias" in names[id(p)])
            for p in no_decay["params"]
        )
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_loader_is_deterministic_resumable_and_rank_disjoint():
    toks = tokens()
    a = PretrainLoader(toks, 4, 16, seed=3)
    first = [a.next() for _ in range(5)]
    b = PretrainLoader(toks, 4, 16, seed=3)
    b.load_state_dict(PretrainLoader(toks, 4, 16, seed=3).state_dict() | {"position": 3 * 4})
    assert torch.equal(b.next()["input_ids"], first[3]["input_ids"])
    x = first[0]
    assert torch.equal(x["input_ids"][:, 1:], x["labels"][:, :-1])
    other = PretrainLoader(toks, 4, 16, seed=3, dp_rank=1, dp_size=2).next()
    assert not torch.equal(other["input_ids"], x["input_ids"])
    v1 = list(val_batches(toks, 4, 16, 200))
    assert sum(b["labels"].numel() for b in v1) == 12 * 16  # 200 // 16 windows
    assert all(torch.equal(p["input_ids"], q["input_ids"]) for p, q in zip(v1, val_batches(toks, 4, 16, 200)))


class PoisonedObjective(CausalLMObjective):
    """Returns NaN on chosen steps (counted by calls / accum)."""

    def __init__(self, bad_steps, accum):
        self.bad, self.accum, self.calls = set(bad_steps), accum, 0

    def loss(self, model, batch):
        out = super().loss(model, batch)
        step = self.calls // self.accum + 1
        self.calls += 1
        if step in self.bad:
            return LossOutput(out.loss_sum * float("nan"), out.count)
        return out


def test_nan_step_is_skipped_and_never_reaches_the_weights(tmp_path):
    cfg = train_cfg(max_steps=6)
    model = tiny_model()
    obj = PoisonedObjective({3}, grad_accum_steps(cfg))
    t = Trainer(model, obj, PretrainLoader(tokens(), 4, 16, 0), cfg, tmp_path)
    before = {}
    orig_step = t.train_step

    def spy():
        if t.step == 2:
            before.update({n: p.detach().clone() for n, p in model.named_parameters()})
        rec = orig_step()
        if t.step == 3:
            assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), (
                "a NaN step changed weights"
            )
        return rec

    t.train_step = spy
    t.fit()
    recs = [r for r in records(tmp_path) if "loss" in r]
    assert [r["step"] for r in recs if "skipped" in r] == [3]
    assert "non-finite" in recs[2]["skipped"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_bad_steps_roll_back_to_the_last_checkpoint_with_half_the_lr(tmp_path):
    cfg = train_cfg(max_steps=12, checkpoint_every=4, max_bad_steps=2, schedule="constant", warmup_steps=0)
    obj = PoisonedObjective({6, 7}, grad_accum_steps(cfg))
    t = Trainer(tiny_model(), obj, PretrainLoader(tokens(), 4, 16, 0), cfg, tmp_path)
    t.fit()
    recs = [r for r in records(tmp_path) if "loss" in r]
    rollback = [r for r in recs if "rollback" in r]
    assert len(rollback) == 1 and rollback[0]["step"] == 7 and rollback[0]["rollback"] == 4
    after = recs[recs.index(rollback[0]) + 1]
    assert after["step"] == 5 and after["lr"] == pytest.approx(cfg.lr / 2)
    assert recs[-1]["step"] == 12 and math.isfinite(recs[-1]["loss"])


def test_bad_steps_without_a_checkpoint_fail_loudly(tmp_path):
    cfg = train_cfg(max_steps=8, max_bad_steps=2)
    obj = PoisonedObjective({2, 3}, grad_accum_steps(cfg))
    t = Trainer(tiny_model(), obj, PretrainLoader(tokens(), 4, 16, 0), cfg, tmp_path)
    with pytest.raises(LmforgeError, match="no checkpoint"):
        t.fit()


def test_loss_spike_is_skipped(tmp_path):
    class Spiky(CausalLMObjective):
        calls = 0

        def loss(self, model, batch):
            out = super().loss(model, batch)
            self.calls += 1
            return LossOutput(out.loss_sum * (100.0 if self.calls == 2 * 15 else 1.0), out.count)

    cfg = train_cfg(max_steps=16)
    t = Trainer(tiny_model(), Spiky(), PretrainLoader(tokens(), 4, 16, 0), cfg, tmp_path)
    t.fit()
    skipped = [r for r in records(tmp_path) if "skipped" in r]
    assert [r["step"] for r in skipped] == [15] and "spike" in skipped[0]["skipped"]


def test_val_bits_per_byte_matches_a_hand_computation(tmp_path):
    class Tok:
        hash = "t"

        def token_bytes(self):
            return [0] + [1 + (i % 3) for i in range(1, V)]  # id 0 is a "special": 0 bytes, not scored

    toks = tokens(2000)
    cfg = train_cfg(max_steps=1)
    model = tiny_model()
    val = functools.partial(val_batches, toks, 4, 16, 256)
    t = Trainer(
        model,
        CausalLMObjective(),
        PretrainLoader(toks, 4, 16, 0),
        cfg,
        tmp_path,
        val_loader_fn=val,
        tokenizer=Tok(),
    )
    t.logger = None
    got = t.evaluate()
    nats = nbytes = total = count = 0.0
    tb = torch.tensor(Tok().token_bytes(), dtype=torch.float64)
    with torch.no_grad():
        for b in val():
            nll = torch.nn.functional.cross_entropy(
                model(b["input_ids"]).flatten(0, 1), b["labels"].flatten(), reduction="none"
            ).double()
            by = tb[b["labels"].flatten()]
            nats += float((nll * (by > 0)).sum())
            nbytes += float(by.sum())
            total += float(nll.sum())
            count += nll.numel()
    assert got["val_bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-9)
    assert got["val_loss"] == pytest.approx(total / count, rel=1e-9)


def test_training_reduces_loss_and_mfu_is_reported(tmp_path):
    cfg = train_cfg(max_steps=30, lr=1e-2)
    t = Trainer(tiny_model(), CausalLMObjective(), PretrainLoader(tokens(), 4, 16, 0), cfg, tmp_path)
    t.fit()
    recs = [r for r in records(tmp_path) if "loss" in r]
    assert recs[-1]["loss"] < recs[0]["loss"] - 1.0
    assert all(
        r["mfu"] > 0 and r["tokens_per_s"] > 0 and r["mem_gb"] > 0 and r["grad_norm"] > 0 for r in recs
    )
    assert (tmp_path / "checkpoints" / "step_000030" / "state.json").exists()  # the final checkpoint


def three_step_losses(out, **overrides) -> list[float]:
    cfg = train_cfg(max_steps=3, **overrides)
    Trainer(tiny_model(), CausalLMObjective(), PretrainLoader(tokens(), 4, 16, 0), cfg, out).fit()
    return [r["loss"] for r in records(out) if "loss" in r]


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    plain = three_step_losses(tmp_path / "plain")
    assert three_step_losses(tmp_path / "ac", activation_checkpointing=True) == pytest.approx(plain, rel=1e-6)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = three_step_losses(tmp_path / "eager")
    assert three_step_losses(tmp_path / "compiled", compile=True) == pytest.approx(eager, rel=1e-4)


def test_wandb_missing_is_a_clear_message_not_a_crash(tmp_path, monkeypatch, capsys):
    import sys

    from lmforge.train.config import WandbConfig
    from lmforge.train.metrics import MetricsLogger

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    logger = MetricsLogger(tmp_path, wandb=WandbConfig(mode="offline"))
    logger.log({"step": 1, "loss": 2.0})
    logger.close()
    assert "wandb is not installed" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 2.0


def test_pipeline_parallelism_refuses_an_objective_without_a_stage_loss(tmp_path):
    """The refusal is by what the objective declares (no `logits_loss`), before any process group."""
    from lmforge.distributed import DistContext
    from lmforge.posttrain.dpo import DPOObjective

    loader = PretrainLoader(tokens(), 4, 16, 0)
    with pytest.raises(
        LmforgeError, match=r"dpo: pipeline parallelism \(parallel.pp 2\) needs a loss .*parallel.pp 1"
    ):
        Trainer(
            tiny_model(),
            DPOObjective(beta=0.1),
            loader,
            train_cfg(),
            tmp_path,
            ctx=DistContext(world_size=2, pp_size=2),
            stage="dpo",
        )


def test_causal_lm_loss_on_a_packed_row_is_the_sum_over_its_conversations():
    """SFT packing: the objective passes the row's positions and block-diagonal mask to the model,
    so two conversations in one row score exactly as each alone."""
    from lmforge.posttrain.sft_data import Example, collate

    a = Example([5, 6, 7, 8], [-100, 7, 8, 9])
    b = Example([10, 11, 12], [-100, -100, 13])
    model, objective = tiny_model().eval(), CausalLMObjective()
    with torch.no_grad():
        packed = objective.loss(model, collate([[a, b]], pad_id=0, length=10))
        alone = [objective.loss(model, collate([[e]], pad_id=0)) for e in (a, b)]
        crossed = objective.loss(
            model,
            {
                "input_ids": torch.tensor([a.input_ids + b.input_ids]),
                "labels": torch.tensor([a.labels + b.labels]),
            },
        )
    assert int(packed.count) == 4
    assert float(packed.loss_sum) == pytest.approx(sum(float(o.loss_sum) for o in alone), rel=1e-6)
    assert float(crossed.loss_sum) != pytest.approx(float(packed.loss_sum), rel=1e-5)  # the mask matters


def test_log_every_writes_a_record_every_n_steps(tmp_path):
    cfg = train_cfg(max_steps=7, log_every=3)
    Trainer(tiny_model(), CausalLMObjective(), PretrainLoader(tokens(), 4, 16, 0), cfg, tmp_path).fit()
    assert [r["step"] for r in records(tmp_path) if "loss" in r] == [3, 6]
