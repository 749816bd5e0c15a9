"""Compiled static-shape decoding (`Engine(compile=True)`) gives exactly the eager greedy tokens."""

import pytest
import torch

from lmforge.data.embedded import embedded_documents
from lmforge.inference import Engine, SamplingParams, static_decode
from lmforge.inference.static_decode import CompiledDecodeStep
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled steps are cached per code object: each test compiles under its own settings."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def tok():
    text = embedded_documents("shakespeare")[0][1][:20_000]
    return Tokenizer.train([text], vocab_size=300, progress=False, workers=1)


def build(tok, arch):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, max_seq_len=128)
    if arch == "llama":
        cfg.n_kv_head = 2  # grouped-query attention in the compiled step too
    model = Transformer(cfg).eval()
    with torch.no_grad():  # large weights: logits far apart, so rounding order cannot flip a greedy pick
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return model


GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
SINGLE = ["ROMEO: But soft"]
PADDED = ["O", "Now is the winter of our", "To be, or"]


def assert_compiled_equals_eager(tok, model, texts, backend="inductor", params=GREEDY):
    prompts = [tok.encode(t) for t in texts]
    eager, compiled = Engine(model, tok), Engine(model, tok, max_batch_size=len(prompts), compile=True)
    compiled.decode_step = CompiledDecodeStep(model, backend)
    want = [c.token_ids for c in eager.generate(prompts, params)]
    assert [c.token_ids for c in compiled.generate(prompts, params)] == want
    assert compiled.compile_seconds > 0 and eager.compile_seconds == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("texts", [SINGLE, PADDED], ids=["batch1", "padded"])
def test_static_shape_step_greedy_equals_eager(tok, arch, texts):
    """The static cache, masks, positions and attention windows (64 then 128 slots: the
    completion crosses slot 64), traced whole by dynamo (no code generation)."""
    assert len({len(tok.encode(t)) for t in PADDED}) == 3
    long = SamplingParams(max_new_tokens=70, temperature=0.0, ignore_eos=True)
    assert_compiled_equals_eager(tok, build(tok, arch), texts, backend="aot_eager", params=long)


def test_frozen_inductor_step_equals_eager_and_follows_weight_updates(tok, monkeypatch):
    # Frozen weights without autotuning: autotuning every product takes minutes on a shared box.
    monkeypatch.setattr(static_decode, "INDUCTOR_CONFIG", {"freezing": True})
    model = build(tok, "llama")
    prompts = [tok.encode(t) for t in PADDED]
    eager, compiled = Engine(model, tok), Engine(model, tok, max_batch_size=3, compile=True)
    before = [c.token_ids for c in compiled.generate(prompts, GREEDY)]
    assert before == [c.token_ids for c in eager.generate(prompts, GREEDY)]
    with torch.no_grad():  # an in-place update, as an optimizer step makes
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight) * 0.5)
    after = [c.token_ids for c in compiled.generate(prompts, GREEDY)]
    assert after == [c.token_ids for c in eager.generate(prompts, GREEDY)] != before


@pytest.mark.slow
def test_frozen_autotuned_step_greedy_equals_eager(tok):
    """The shipped settings (frozen weights, C++ GEMM template) on a padded llama batch (~1 min)."""
    assert_compiled_equals_eager(tok, build(tok, "llama"), PADDED)
