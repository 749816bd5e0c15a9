"""Document masking through flex_attention (on CUDA): the BlockMask's mask is the dense SDPA mask,
and on the CPU (flex_attention eager, forward only: it has no CPU backward) both give the same loss."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.attention.flex_attention import BlockMask, create_mask

from lmforge.model.config import ModelConfig
from lmforge.model.flex import document_mask_mod
from lmforge.model.transformer import Transformer
from lmforge.train.data import PretrainLoader, doc_mask_kernel, document_mask
from lmforge.train.objectives import CausalLMObjective

EOS, V = 1, 64


def windows(seed: int = 0, B: int = 3, T: int = 40) -> torch.Tensor:
    """Token windows with a few separators at random places (documents of uneven lengths)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, V, (B, T), generator=g)
    x[torch.rand(B, T, generator=g) < 0.1] = EOS
    return x


def test_the_mask_mod_is_the_dense_sdpa_mask():
    x = windows()
    B, T = x.shape
    flex = document_mask(x, EOS, "flex")
    dense = create_mask(document_mask_mod(flex["doc_ids"]), B, 1, T, T, device="cpu")
    sdpa = document_mask(x, EOS, "sdpa")
    assert torch.equal(dense, sdpa["attn_mask"])
    assert torch.equal(flex["positions"], sdpa["positions"])
    assert 0 < dense.sum() < torch.ones(T, T).tril().sum() * B  # some pairs are masked across documents


@torch.no_grad()  # flex_attention has no backward on the CPU: training takes it on CUDA only
def test_flex_and_sdpa_give_the_same_loss():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V, n_layer=2, d_model=32, n_head=4, n_kv_head=2, max_seq_len=64, value_embeds=1
    )
    model = Transformer(cfg).eval()
    objective = CausalLMObjective()
    x = windows(T=41)
    losses = {}
    for kernel in ("sdpa", "flex"):
        batch = {"input_ids": x[:, :-1], "labels": x[:, 1:], **document_mask(x[:, :-1], EOS, kernel)}
        assert isinstance(objective.model_inputs(batch)["attn_mask"], BlockMask) == (kernel == "flex")
        losses[kernel] = objective.loss(model, batch).loss_sum
        nll, _ = objective.token_nll(model, batch)
        losses[kernel + " per token"] = nll
    torch.testing.assert_close(losses["flex"], losses["sdpa"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["flex per token"], losses["sdpa per token"], atol=1e-5, rtol=1e-5)
    unmasked = objective.loss(model, {"input_ids": x[:, :-1], "labels": x[:, 1:]}).loss_sum
    assert not torch.allclose(unmasked, losses["sdpa"], atol=1e-3)  # the mask is doing something


def test_the_loader_gives_document_ids_for_flex():
    toks = windows(B=1, T=2000)[0].numpy().astype(np.uint16)
    sdpa = PretrainLoader(toks, 2, 32, seed=0, doc_mask=True, eos_id=EOS).next()
    flex = PretrainLoader(toks, 2, 32, seed=0, doc_mask=True, doc_mask_kernel="flex", eos_id=EOS).next()
    assert set(flex) == {"input_ids", "labels", "positions", "doc_ids"}
    assert torch.equal(flex["input_ids"], sdpa["input_ids"]) and torch.equal(
        flex["positions"], sdpa["positions"]
    )


def test_kernel_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert doc_mask_kernel(cpu) == "sdpa" and doc_mask_kernel(cuda) == "flex"
    assert doc_mask_kernel(cuda, pipeline=True) == "sdpa"
    assert doc_mask_kernel(cuda, dropout=0.1) == "sdpa"
