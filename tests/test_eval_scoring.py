"""Scoring against lm-eval itself: its rolling-window vector, and HFLM on the same weights."""

import math

import pytest
import torch

from lmforge.inference import scoring
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from test_eval_helpers import hf_llama_from, small_tokenizer


def test_rolling_windows_match_lm_eval_vector():
    # lm-eval tests/test_utils.py: 34 tokens, max_seq_len 10, prefix -100
    windows = list(scoring.get_rolling_token_windows(list(range(34)), -100, 10, 1))
    assert [w[1] for w in windows] == [
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 30)),
        list(range(30, 34)),
    ]
    assert windows[0][0] == [-100] + list(range(9))
    assert windows[-1][0] == list(range(23, 33))
    assert scoring.make_disjoint_window(windows[-1]) == (list(range(23, 30)), list(range(30, 34)))


def test_rolling_windows_equal_lm_eval_utils():
    lm_utils = pytest.importorskip("lm_eval.utils")
    get_rolling_token_windows, make_disjoint_window = (
        lm_utils.get_rolling_token_windows,
        lm_utils.make_disjoint_window,
    )

    for n, L, c in [(1, 4, 1), (34, 10, 1), (100, 7, 3), (7, 7, 1), (8, 7, 7)]:
        tokens = list(range(n))
        ours = [scoring.make_disjoint_window(w) for w in scoring.get_rolling_token_windows(tokens, -1, L, c)]
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, -1, L, c)]
        assert ours == theirs


@pytest.fixture(scope="module")
def model_and_tok():
    tok = small_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=32)
    model = Transformer(cfg).eval()
    return model, tok


def _hflm(model, tok, tmp_path):
    HFLM = pytest.importorskip("lm_eval.models.huggingface").HFLM
    from transformers import AutoTokenizer

    tok.save(tmp_path / "tok")
    return HFLM(
        pretrained=hf_llama_from(model),
        tokenizer=AutoTokenizer.from_pretrained(tmp_path / "tok"),
        max_length=model.cfg.max_seq_len,
        batch_size=4,
    )


def test_loglikelihoods_equal_hflm(model_and_tok, tmp_path):
    Instance = pytest.importorskip("lm_eval.api.instance").Instance

    model, tok = model_and_tok
    requests = [
        ("The king is", " dead"),
        ("Question: who speaks first?\nAnswer: ", "Hamlet"),  # trailing space moves to the continuation
        ("", "To be or not to be"),  # empty context -> BOS prefix
        ("A long context " * 12, " that is cropped from the left"),  # > max_seq_len tokens
        ("Exit", ","),
    ]
    ours = scoring.loglikelihoods(model, tok, requests, batch_size=2)
    hflm = _hflm(model, tok, tmp_path)
    insts = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    theirs = hflm.loglikelihood(insts, disable_tqdm=True)
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb
    assert all(ll < 0 for ll, _ in ours)


def test_rolling_loglikelihoods_equal_hflm(model_and_tok, tmp_path):
    Instance = pytest.importorskip("lm_eval.api.instance").Instance

    model, tok = model_and_tok
    texts = [
        "Now is the winter of our discontent " * 4,
        "Short.",
        "O Romeo, Romeo! wherefore art thou Romeo?" * 3,
    ]
    ours = scoring.rolling_loglikelihoods(model, tok, texts, batch_size=3)
    hflm = _hflm(model, tok, tmp_path)
    theirs = hflm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    )
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_token_loglikelihoods_match_a_plain_forward(model_and_tok):
    model, tok = model_and_tok
    ctx, cont = [tok.bos_id, 5, 6, 7], [8, 9]
    ((ll, greedy),) = scoring.token_loglikelihoods(model, [(ctx, cont)])
    with torch.no_grad():
        logp = model(torch.tensor([ctx + cont[:-1]])).log_softmax(-1)[0]
    expect = logp[3, 8] + logp[4, 9]
    assert ll == pytest.approx(float(expect), abs=1e-5)
    assert greedy == bool(logp[3].argmax() == 8 and logp[4].argmax() == 9)
    assert scoring.token_loglikelihoods(model, [(ctx, [])]) == [(0.0, True)]
    assert math.isfinite(ll)
