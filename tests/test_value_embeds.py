"""Value embeddings (`model.value_embeds`): per-layer token-embedding tables added to the attention
values of the first and last layers, free in counted FLOPs, embeddings to the optimizer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import (
    ModelConfig,
    check_exportable,
    flops_per_token,
    num_params,
    value_embed_layers,
)
from lmforge.model.transformer import Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.optim import build_optimizer

V = 64


def model_cfg(**kw) -> ModelConfig:
    kw = {"vocab_size": V, "n_layer": 4, "d_model": 32, "n_head": 4, "n_kv_head": 2, "max_seq_len": 32} | kw
    return ModelConfig(**kw)


def build(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(model_cfg(**kw))


@pytest.mark.parametrize(
    "n_layer, n, layers", [(4, 0, []), (4, 1, [0]), (4, 2, [0, 3]), (5, 3, [0, 1, 4]), (4, 4, [0, 1, 2, 3])]
)
def test_the_first_and_last_layers_get_a_table(n_layer, n, layers):
    cfg = model_cfg(n_layer=n_layer, value_embeds=n)
    assert value_embed_layers(cfg) == layers
    model = Transformer(cfg)
    assert list(model.value_embeds) == [str(i) for i in layers]
    for i, block in model.layers.items():
        assert (block.attn.ve_lambda is not None) == (int(i) in layers)
    for table in model.value_embeds.values():
        assert isinstance(table, torch.nn.Embedding) and table.weight.shape == (V, 2 * 8)


def test_more_value_embeddings_than_layers_is_refused():
    with pytest.raises(ValueError, match="value_embeds"):
        model_cfg(value_embeds=5).validate()
    model_cfg(value_embeds=4).validate()


def test_forward_shapes_and_gradients_reach_tables_and_gains():
    model = build(value_embeds=2)
    x = torch.randint(0, V, (3, 10))
    logits = model(x)
    assert logits.shape == (3, 10, V)
    logits.square().mean().backward()
    for table in model.value_embeds.values():
        assert table.weight.grad is not None and table.weight.grad[x.unique()].abs().sum() > 0
    for i in ("0", "3"):
        lam = model.layers[i].attn.ve_lambda
        assert lam.shape == (1,) and lam.item() == 1.0 and lam.grad.abs().item() > 0


def test_zero_tables_give_exactly_the_model_without_them():
    base, model = build(), build(value_embeds=2)
    base.load_state_dict({k: v for k, v in model.state_dict().items() if k in base.state_dict()})
    with torch.no_grad():
        for table in model.value_embeds.values():
            table.weight.zero_()
    x = torch.randint(0, V, (2, 12))
    assert torch.equal(model(x), base(x))
    with torch.no_grad():
        model.value_embeds["3"].weight.normal_()
    assert not torch.allclose(model(x), base(x), atol=1e-3)


def test_kv_cache_decoding_equals_the_full_forward():
    from lmforge.inference.kv_cache import KVCache

    model = build(value_embeds=2).eval()
    with torch.no_grad():
        for table in model.value_embeds.values():
            table.weight.normal_()  # large enough that a missing or misplaced lookup shows
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        full = model(x)
        cache = KVCache.for_model(model, 2, 12)
        steps = [model(x[:, :8], cache=cache, start_pos=0)]
        steps += [model(x[:, t : t + 1], cache=cache, start_pos=t) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_value_embeddings_are_free_in_counted_flops_but_counted_in_size():
    cfg, ve = model_cfg(), model_cfg(value_embeds=2)
    assert flops_per_token(ve) == flops_per_token(cfg)
    assert num_params(ve, include_embedding=False) == num_params(cfg, include_embedding=False)
    assert num_params(ve) == num_params(cfg) + 2 * (V * 16 + 1)
    model = build(value_embeds=2)
    assert model.num_params() == num_params(ve)
    assert model.num_params(include_embedding=False) == num_params(ve, include_embedding=False)


def test_optimizer_gives_tables_the_embedding_role_and_gains_the_scalar_one():
    model = build(value_embeds=2, tie_embeddings=False)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, embedding_lr=5e-3))
    muon, adamw = list(opt)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert not any("value_embeds" in n or "ve_lambda" in n for n in in_muon)
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in adamw.param_groups}
    assert groups["embedding"] == {"tok_emb.weight", "value_embeds.0.weight", "value_embeds.3.weight"}
    assert {"layers.0.attn.ve_lambda", "layers.3.attn.ve_lambda"} <= groups["scalar"]
    embedding = next(g for g in adamw.param_groups if g["name"] == "embedding")
    assert embedding["lr_scale"] == pytest.approx(5.0) and embedding["weight_decay"] == 0.0


@pytest.mark.parametrize("target", ["Hugging Face", "GGUF"])
def test_export_is_refused(target):
    with pytest.raises(LmforgeError, match=f"{target}.*model.value_embeds"):
        check_exportable(model_cfg(value_embeds=1), target)


def test_pipeline_parallelism_is_refused():
    from lmforge.distributed.pipeline import split_for_pipeline

    with pytest.raises(LmforgeError, match="value_embeds"):
        split_for_pipeline(build(value_embeds=2, tie_embeddings=False), 1, 2)


def test_meta_device_build_replays_the_single_process_weights():
    """The sharded build (meta device, then each parameter's recorded init replayed) gives the
    same tables and gains as a plain build: the gains are set to 1 by init_weights."""
    from lmforge.distributed.materialize import build_on_meta, materialize, replay

    torch.manual_seed(0)
    model, recipes = build_on_meta(lambda: Transformer(model_cfg(value_embeds=2)))
    materialize(model, torch.device("cpu"))
    replay(model, recipes)
    ref = build(value_embeds=2)
    for (name, p), (_, q) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(p, q), name


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    """4 steps in one go == 2 steps, checkpoint, a new Trainer resuming, 2 more: bitwise."""
    from lmforge.train.data import PretrainLoader
    from lmforge.train.objectives import CausalLMObjective
    from lmforge.train.trainer import Trainer

    tokens = np.random.default_rng(0).integers(0, V, 5000).astype(np.uint16)
    cfg = TrainConfig(
        optimizer="muon",
        max_steps=4,
        batch_tokens=64,
        micro_batch=4,
        seq_len=16,
        lr=1e-2,
        embedding_lr=2e-2,
        warmup_steps=1,
        eval_every=0,
        checkpoint_every=2,
        samples=0,
        log_every=1,
    )
    mcfg = model_cfg(value_embeds=2)

    def losses(out, max_steps):
        torch.manual_seed(0)
        model = Transformer(mcfg)
        c = dataclasses.replace(cfg, max_steps=max_steps)
        Trainer(model, CausalLMObjective(), PretrainLoader(tokens, 4, 16, 0), c, out, model_cfg=mcfg).fit()
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"loss"' in line]

    straight = losses(tmp_path / "a", 4)
    losses(tmp_path / "b", 2)
    assert losses(tmp_path / "b", 4) == straight
