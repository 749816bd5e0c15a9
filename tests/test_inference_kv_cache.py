"""The KV caches of lmforge.inference.kv_cache, driven through the model's forward."""

import pytest
import torch

from lmforge.inference.kv_cache import KVCache, StaticKVCache, static_cache_length
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


def small(arch="llama"):
    return ModelConfig(
        arch=arch, vocab_size=300, n_layer=2, d_model=64, n_head=4, n_kv_head=2 if arch == "llama" else 4
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("cache_class", [KVCache, StaticKVCache])
def test_cached_chunks_match_full_forward(arch, cache_class):
    torch.manual_seed(0)
    m = Transformer(small(arch)).eval()
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        full = m(x)
        cache = cache_class(m.cfg, 2, 16)
        parts = [m(x[:, :5], cache=cache, start_pos=0), m(x[:, 5:9], cache=cache, start_pos=5)]
        parts += [m(x[:, t : t + 1], cache=cache, start_pos=t) for t in range(9, 12)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_for_model_follows_device_and_dtype():
    m = Transformer(small()).to(torch.bfloat16)
    cache = KVCache.for_model(m, batch_size=3, max_len=10)
    assert cache.k.dtype == torch.bfloat16 and cache.k.shape == (2, 3, 2, 10, 16)


def test_keep_rows_drops_finished_rows_and_decoding_goes_on():
    """Row 1 of a batch leaves the cache; row 0 then decodes exactly as if it had been alone."""
    torch.manual_seed(0)
    m = Transformer(small()).eval()
    x = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        cache = KVCache.for_model(m, 2, 8)
        m(x[:, :6], cache=cache, start_pos=0)
        cache.keep_rows(torch.tensor([0]))
        assert cache.k.shape[1] == 1
        got = m(x[:1, 6:7], cache=cache, start_pos=6)
        want = m(x[:1, :7])[:, -1:]
    assert torch.allclose(got, want, atol=1e-5)


def test_caches_refuse_positions_beyond_their_length():
    cfg = small()
    for cache in (KVCache(cfg, 1, 4), StaticKVCache(cfg, 1, 4)):
        k = torch.zeros(1, 2, 3, 16)
        cache.update(0, k, k, 0)
        with pytest.raises(ValueError, match="holds 4 positions"):
            cache.update(0, k, k, 2)


def test_static_cache_prefill_then_position_writes():
    cfg = ModelConfig(vocab_size=16, n_layer=1, d_model=8, n_head=2, max_seq_len=8)
    cache = StaticKVCache(cfg, batch_size=1, max_len=4)
    k = torch.ones(1, 2, 2, 4)
    got_k, _ = cache.update(0, k, k, 0)
    assert got_k.shape[2] == 2
    got_k, _ = cache.update(0, 2 * k[:, :, :1], k[:, :, :1], torch.tensor([2]))
    assert got_k.shape[2] == 4 and got_k[0, 0, :, 0].tolist() == [1, 1, 2, 0]
    assert [static_cache_length(n) for n in (1, 64, 65, 200)] == [64, 64, 128, 256]
    window = cache.window(3)
    assert window.k[0].shape[2] == 3 and window.k[0].data_ptr() == cache.k[0].data_ptr()
