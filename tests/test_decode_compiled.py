"""Compiled static-shape decoding (`Engine(compile=True)`) gives exactly the eager greedy tokens."""

import pytest
import torch

from lmforge.data.embedded import embedded_documents
from lmforge.inference import Engine, SamplingParams
from lmforge.inference.static_decode import StaticKVCache, static_cache_length
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    text = embedded_documents("shakespeare")[0][1][:20_000]
    return Tokenizer.train([text], vocab_size=300, progress=False, workers=1)


def build(tok, arch):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, max_seq_len=64)
    if arch == "llama":
        cfg.n_kv_head = 2  # grouped-query attention in the compiled step too
    model = Transformer(cfg).eval()
    with torch.no_grad():  # large weights: logits far apart, so rounding order cannot flip a greedy pick
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return model


GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compiled_greedy_equals_eager_batch1_and_padded(tok, arch):
    model = build(tok, arch)
    single = [tok.encode("ROMEO: But soft")]
    padded = [tok.encode(t) for t in ["O", "Now is the winter of our", "To be, or"]]
    assert len({len(p) for p in padded}) == 3
    eager, compiled = Engine(model, tok), Engine(model, tok, max_batch_size=3, compile=True)
    for prompts in (single, padded):
        want = [c.token_ids for c in eager.generate(prompts, GREEDY)]
        assert [c.token_ids for c in compiled.generate(prompts, GREEDY)] == want
    assert compiled.compile_seconds > 0 and eager.compile_seconds == 0


def test_static_cache_prefill_then_position_writes():
    cfg = ModelConfig(vocab_size=16, n_layer=1, d_model=8, n_head=2, max_seq_len=8)
    cache = StaticKVCache(cfg, batch_size=1, max_len=4)
    k = torch.ones(1, 2, 2, 4)
    got_k, _ = cache.update(0, k, k, 0)
    assert got_k.shape[2] == 2
    got_k, _ = cache.update(0, 2 * k[:, :, :1], k[:, :, :1], torch.tensor([2]))
    assert got_k.shape[2] == 4 and got_k[0, 0, :, 0].tolist() == [1, 1, 2, 0]
    assert [static_cache_length(n) for n in (1, 64, 65, 200)] == [64, 64, 128, 256]
