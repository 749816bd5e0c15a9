import pytest
import torch

from lmforge.model.config import PRESETS, ModelConfig, flops_per_token, num_params
from lmforge.model.transformer import Transformer


def small(arch="llama", **kw):
    base = dict(
        arch=arch, vocab_size=300, n_layer=2, d_model=64, n_head=4, n_kv_head=2 if arch == "llama" else 4
    )
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_formula_is_exact(arch, tie):
    cfg = small(arch, tie_embeddings=tie)
    assert Transformer(cfg).num_params() == num_params(cfg)


def test_causality_future_tokens_do_not_change_past_logits():
    m = Transformer(small()).eval()
    x = torch.randint(0, 300, (1, 10))
    y = x.clone()
    y[0, 7:] = (y[0, 7:] + 1) % 300
    with torch.no_grad():
        assert torch.allclose(m(x)[:, :7], m(y)[:, :7], atol=1e-6)
        assert not torch.allclose(m(x)[:, 7:], m(y)[:, 7:])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_positions_equal_per_row_positions(arch):
    """Without `positions` the rotary tables / position embeddings are built once and broadcast
    over the batch: the same logits and gradients as every row passing its own positions."""
    torch.manual_seed(0)
    m = Transformer(small(arch))
    x = torch.randint(0, 300, (3, 12))
    shared = m(x)
    shared.square().mean().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    per_row = m(x, positions=torch.arange(12).expand(3, 12))
    per_row.square().mean().backward()
    torch.testing.assert_close(shared, per_row, rtol=0, atol=1e-6)
    for g, p in zip(grads, m.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_tied_head_shares_storage():
    m = Transformer(small(tie_embeddings=True))
    assert m.lm_head.weight.data_ptr() == m.tok_emb.weight.data_ptr()


def test_residual_projection_init_is_scaled():
    cfg = small(n_layer=8, d_model=256, n_head=8, n_kv_head=8)
    m = Transformer(cfg)
    wo = m.layers["0"].attn.wo.weight.std().item()
    wq = m.layers["0"].attn.wq.weight.std().item()
    assert wo == pytest.approx(wq / 4, rel=0.1)  # 1/sqrt(2*8)


def test_flops_per_token_counts_attention():
    cfg = small(max_seq_len=128)
    n = num_params(cfg, include_embedding=False) + cfg.vocab_size * cfg.d_model
    assert flops_per_token(cfg, 128) == 6 * n + 12 * 2 * 4 * 16 * 128


def test_presets_build_consistent_configs():
    for name in PRESETS:
        cfg = ModelConfig(preset=name, vocab_size=32000)
        cfg.validate()
        assert num_params(cfg) > 0
    assert 0.5e6 < num_params(ModelConfig(preset="tiny", vocab_size=4096), include_embedding=False) < 2e6
    assert 60e9 < num_params(ModelConfig(preset="70b", vocab_size=128256)) < 75e9


def test_vocab_size_required():
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(ModelConfig())
