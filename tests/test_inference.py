"""The generation engine: KV-cache decoding against full forward passes, batching, sampling, seeds."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lmforge.data.embedded import embedded_documents
from lmforge.errors import LmforgeError
from lmforge.inference import Engine, SamplingParams, filter_logits, generate, sample_next
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    text = embedded_documents("shakespeare")[0][1][:20_000]
    return Tokenizer.train([text], vocab_size=400, progress=False, workers=1)


def build(tok, arch="llama", seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(arch=arch, vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64)
    base["n_kv_head"] = 2 if arch == "llama" else 4
    base.update(kw)
    model = Transformer(ModelConfig(**base)).eval()
    # Larger weights than the default init make the logits far apart, so greedy ties cannot happen.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return model


def full_forward_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


GREEDY = SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_with_cache_equals_full_forward_batch1(tok, arch):
    model = build(tok, arch)
    prompt = tok.encode("ROMEO: But soft, what light")
    out = Engine(model, tok).generate([prompt], GREEDY)[0]
    assert out.token_ids == full_forward_greedy(model, prompt, 20)
    assert out.finish_reason == "length" and out.completion_tokens == 20 and out.prompt_tokens == len(prompt)
    assert out.text == tok.decode(out.token_ids)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_padded_batch_equals_full_forward(tok, arch):
    model = build(tok, arch, seed=1)
    prompts = [tok.encode(t) for t in ["O", "Now is the winter of our discontent", "To be, or not", "What"]]
    assert len({len(p) for p in prompts}) == 4
    outs = Engine(model, tok).generate(prompts, GREEDY)
    for p, out in zip(prompts, outs):
        assert out.token_ids == full_forward_greedy(model, p, 20)


def test_batched_equals_one_by_one_greedy_and_sampled(tok):
    model = build(tok, seed=2)
    prompts = [tok.encode(t) for t in ["First Citizen:", "Speak, speak.", "You are all resolved", "A"]]
    for params in (
        GREEDY,
        SamplingParams(max_new_tokens=15, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True),
    ):
        batched = Engine(model, tok, max_batch_size=3).generate(prompts, params)
        for i, p in enumerate(prompts):
            seed = None if params.seed is None else params.seed + i  # prompt i of a call uses seed + i
            single = Engine(model, tok).generate([p], SamplingParams(**{**vars(params), "seed": seed}))[0]
            assert single.token_ids == batched[i].token_ids


def test_sampling_reproducible_by_seed(tok):
    model = build(tok, seed=3)
    engine = Engine(model, tok)
    prompt = tok.encode("KING:")
    params = dict(max_new_tokens=25, temperature=1.5, ignore_eos=True)
    a = engine.generate([prompt], SamplingParams(seed=11, **params))[0].token_ids
    b = engine.generate([prompt], SamplingParams(seed=11, **params))[0].token_ids
    c = engine.generate([prompt], SamplingParams(seed=12, **params))[0].token_ids
    assert a == b and a != c
    torch.manual_seed(0)
    d = engine.generate([prompt], SamplingParams(**params))[0].token_ids
    torch.manual_seed(0)
    assert engine.generate([prompt], SamplingParams(**params))[0].token_ids == d
    # The same prompt twice in one call gives two different samples (seeds seed and seed + 1).
    twice = engine.generate([prompt, prompt], SamplingParams(seed=11, **params))
    assert twice[0].token_ids == a and twice[1].token_ids != a


def test_top_k_1_equals_greedy(tok):
    model = build(tok, seed=4)
    prompt = tok.encode("Good morrow")
    engine = Engine(model, tok)
    sampled = engine.generate([prompt], SamplingParams(max_new_tokens=20, top_k=1, seed=5, ignore_eos=True))[
        0
    ]
    assert sampled.token_ids == engine.generate([prompt], GREEDY)[0].token_ids


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 10, 1.0), (1.0, 0, 0.8), (1.3, 50, 0.5)]
)
def test_filters_match_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    ours = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    kept = ~torch.isinf(ref)
    assert torch.allclose(ours[kept], ref[kept])


def test_sampler_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]).repeat(4000, 1)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    draws = sample_next(logits, params)
    probs = filter_logits(logits[:1], top_p=0.9).softmax(-1)[0]
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[probs == 0].sum() == 0  # tokens outside the nucleus are never drawn
    assert torch.allclose(freq, probs, atol=0.03)


def test_max_new_tokens_zero_and_bad_params(tok):
    model = build(tok)
    out = Engine(model, tok).generate([tok.encode("Hi")], SamplingParams(max_new_tokens=0))[0]
    assert out.token_ids == [] and out.text == "" and out.finish_reason == "length"
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(top_k=-2), dict(stop=[""])):
        with pytest.raises(LmforgeError):
            SamplingParams(**bad)
    with pytest.raises(LmforgeError, match="empty"):
        Engine(model, tok).generate([[]])


def test_generate_convenience_and_model_mode_restored(tok):
    model = build(tok).train()
    text = generate(model, tok, "To be", max_new_tokens=8, temperature=0.0, ignore_eos=True)
    prompt = Engine(model, tok).encode_prompt("To be")
    assert prompt[0] == tok.eos_id  # a document starts after <|eos|> in the token shards
    assert text == tok.decode(full_forward_greedy(model.eval(), prompt, 8))
    assert generate(model.train(), tok, "To be", max_new_tokens=8, temperature=0.0, ignore_eos=True) == text
    assert model.training
