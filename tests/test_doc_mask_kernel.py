"""`train.doc_mask_kernel`: the recipe key, the kernel chosen for each value, flex refused at the
start of the pretrain stage where it cannot train, a change of kernel allowed on resume, and the
key in `--help`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import lmforge.distributed
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.recipe import load_recipe
from lmforge.train.config import TrainConfig
from lmforge.train.data import PretrainLoader, doc_mask_kernel
from lmforge.train.objectives import CausalLMObjective
from lmforge.train.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_recipe_key_takes_auto_sdpa_or_flex():
    assert load_recipe(None).train.doc_mask_kernel == "auto"
    for value in ("auto", "sdpa", "flex"):
        assert load_recipe(None, {"train.doc_mask_kernel": value}).train.doc_mask_kernel == value
    with pytest.raises(LmforgeError, match=r"train.doc_mask_kernel must be one of .*did you mean 'flex'"):
        load_recipe(None, {"train.doc_mask_kernel": "flexx"})


def test_auto_picks_flex_where_it_can_train_and_sdpa_elsewhere():
    assert doc_mask_kernel(CUDA) == doc_mask_kernel(CUDA, choice="auto") == "flex"
    assert doc_mask_kernel(CPU, choice="auto") == "sdpa"
    assert doc_mask_kernel(CUDA, choice="auto", pipeline=True) == "sdpa"
    assert doc_mask_kernel(CUDA, choice="auto", dropout=0.1) == "sdpa"


def test_sdpa_is_the_dense_mask_everywhere():
    for kw in ({}, {"pipeline": True}, {"dropout": 0.1}):
        assert doc_mask_kernel(CUDA, choice="sdpa", **kw) == "sdpa"
    assert doc_mask_kernel(CPU, choice="sdpa") == "sdpa"


@pytest.mark.parametrize(
    "device, kw, reason",
    [
        (CPU, {}, "no backward on cpu"),
        (CUDA, {"pipeline": True}, "pipeline parallelism"),
        (CUDA, {"dropout": 0.1}, r"no attention dropout \(model.dropout is 0.1\)"),
    ],
    ids=["cpu", "pipeline", "dropout"],
)
def test_flex_is_forced_or_refused_with_the_reason_and_the_key(device, kw, reason):
    assert doc_mask_kernel(CUDA, choice="flex") == "flex"
    with pytest.raises(LmforgeError, match=f"train.doc_mask_kernel flex cannot run here: .*{reason}"):
        doc_mask_kernel(device, choice="flex", **kw)


class Built(Exception):
    """Raised in place of building the model: the stage got past its kernel choice."""


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A run directory with a tiny tokenizer and token shards; building the model raises `Built`."""
    from lmforge.data.embedded import embedded_documents
    from lmforge.shards import tokenize_documents
    from lmforge.tokenizer import Tokenizer

    text = embedded_documents("shakespeare")[0][1][:12_000]
    docs = [text[i : i + 2000] for i in range(0, len(text), 2000)]
    tok = Tokenizer.train(docs, vocab_size=300)
    tok.save(tmp_path / "tokenizer")
    tokenize_documents(tok, docs, tmp_path / "tokens", val_fraction=0.2, seed=1, progress=False)

    def build(*args, **kwargs):
        raise Built

    monkeypatch.setattr(lmforge.distributed, "build_parallel_model", build)
    return tmp_path


def pretrain(run_dir, **train):
    from lmforge.stages.pretrain import pretrain_stage

    recipe = load_recipe(None, {"train.device": "cpu", **{f"train.{k}": v for k, v in train.items()}})
    pretrain_stage(recipe, run_dir)


def test_pretrain_refuses_flex_on_the_cpu_before_building_the_model(run_dir):
    with pytest.raises(LmforgeError, match="train.doc_mask_kernel flex cannot run here: .*cpu"):
        pretrain(run_dir, doc_mask=True, doc_mask_kernel="flex")
    with pytest.raises(Built):  # without doc_mask the kernel is not used, nor checked
        pretrain(run_dir, doc_mask=False, doc_mask_kernel="flex")
    with pytest.raises(Built):
        pretrain(run_dir, doc_mask=True, doc_mask_kernel="sdpa")


def test_a_kernel_change_keeps_the_resume_hash(tmp_path):
    """The kernel does not change the math: a run may resume on another (as on another device)."""
    model_cfg = ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, max_seq_len=16)
    tokens = np.arange(4096, dtype=np.uint16) % 64

    def resume_hash(**train):
        cfg = dataclasses.replace(
            TrainConfig(device="cpu", micro_batch=2, seq_len=16, batch_tokens=32), **train
        )
        loader = PretrainLoader(tokens, 2, 16, 0)
        model = Transformer(model_cfg)
        return Trainer(model, CausalLMObjective(), loader, cfg, tmp_path, model_cfg=model_cfg).compute_hash()

    auto = resume_hash(doc_mask=True)
    assert (
        resume_hash(doc_mask=True, doc_mask_kernel="sdpa")
        == resume_hash(doc_mask=True, doc_mask_kernel="flex")
        == auto
    )
    assert resume_hash(doc_mask=False) != auto  # the mask itself does change the trajectory


def test_help_lists_the_key_with_its_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--train.doc_mask_kernel auto doc_mask's attention: auto picks flex_attention on CUDA" in out
