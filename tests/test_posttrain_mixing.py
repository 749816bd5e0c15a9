"""Pretraining windows mixed into SFT and DPO (lmforge.posttrain.mixing): the rows, the term, and
that the mixture keeps a fine-tuned model's plain-text loss where pretraining left it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data.embedded import play_text, shakespeare_plays
from lmforge.model.config import ModelConfig
from lmforge.model.loss import IGNORE_INDEX
from lmforge.model.transformer import Transformer
from lmforge.posttrain.dpo import DPOObjective
from lmforge.posttrain.mixing import (
    PreferenceMixLoader,
    PretrainWindows,
    SFTMixLoader,
    pretrain_tokens,
    rows_in_micro_batch,
)
from lmforge.posttrain.preference import PreferenceLoader, tokenize_pair
from lmforge.posttrain.sft_data import SFTLoader, sft_examples
from lmforge.shards import load_tokens, tokenize_documents
from lmforge.tasks.chat_data import Preference
from lmforge.tasks.config import DemoConfig
from lmforge.tasks.demo import build_demo_tasks
from lmforge.tokenizer import Tokenizer
from lmforge.train.data import PretrainLoader, val_batches
from lmforge.train.objectives import CausalLMObjective

SEQ = 128


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer and token shards (RUN_DIR/tokens) from five plays, and the demo SFT conversations
    without small talk (short answers only: the case that forgets)."""
    run = tmp_path_factory.mktemp("run")
    plays = shakespeare_plays()[:5]
    texts = [play_text(p) for p in plays]
    tok = Tokenizer.train(texts, vocab_size=400, progress=False, workers=1)
    tokenize_documents(tok, texts, run / "tokens", val_fraction=0.34, seed=1, progress=False)
    cfg = DemoConfig(which_play=200, who_speaks=20, continue_speech=20, small_talk=0, preference_pairs=8,
                     eval_items=4)
    tasks = build_demo_tasks(cfg, 1, plays)
    return run, tok, tasks


def test_rows_per_micro_batch_meet_the_fraction_exactly():
    counts = [rows_in_micro_batch(k, 0.3, 8) for k in range(100)]
    assert sum(counts) == 240 and set(counts) <= {2, 3}
    assert all(rows_in_micro_batch(k, 0.0, 8) == 0 for k in range(10))


def test_sft_batches_carry_fully_supervised_windows_and_resume_exactly(corpus):
    run, tok, tasks = corpus
    tokens = pretrain_tokens(run, tok)
    examples = sft_examples(tasks.sft, tok, SEQ)

    def loader():
        sft = SFTLoader(examples, 4, SEQ, 0, tok.special_ids["<|eos|>"])
        return SFTMixLoader(sft, PretrainWindows(tokens, SEQ, 0), 0.25, 4)

    a = loader()
    batch = a.next()
    assert batch["input_ids"].shape == (4, SEQ) and batch["attn_mask"].shape == (4, 1, SEQ, SEQ)
    window = batch["labels"][-1]
    assert (window != IGNORE_INDEX).all()  # every token of a pretraining window is a target
    assert torch.equal(batch["input_ids"][-1, 1:], window[:-1])
    assert torch.equal(batch["positions"][-1], torch.arange(SEQ))
    sft_rows = batch["labels"][:3]
    assert (sft_rows == IGNORE_INDEX).float().mean() > 0.3  # conversations: prompts are not targets
    for _ in range(3):
        a.next()
    state = a.state_dict()
    expected = [a.next() for _ in range(3)]
    b = loader()
    b.load_state_dict(state)
    for want in expected:
        got = b.next()
        assert all(torch.equal(want[k], got[k]) for k in want)


def test_tokens_of_another_tokenizer_are_refused(corpus, tmp_path):
    from lmforge.errors import LmforgeError

    run, tok, _ = corpus
    other = Tokenizer.train(["a different corpus entirely " * 50], vocab_size=300, progress=False, workers=1)
    with pytest.raises(LmforgeError, match="tokenizer"):
        pretrain_tokens(run, other)
    with pytest.raises(LmforgeError, match="tokenize stage"):
        pretrain_tokens(tmp_path, tok)


def test_dpo_pretrain_term_adds_the_windows_mean_nll_per_pair(corpus):
    run, tok, _ = corpus
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=1, d_model=32, n_head=2, vocab_size=tok.vocab_size,
                                    max_seq_len=SEQ))
    pairs = [tokenize_pair(Preference([{"role": "user", "content": f"q{i}"}], "yes", "no"), tok, SEQ)
             for i in range(4)]
    base = PreferenceLoader(pairs, 2, 0, 0, ref_logps=[(0.0, 0.0)] * 4)
    batch = PreferenceMixLoader(base, PretrainWindows(pretrain_tokens(run, tok), SEQ, 0), 2).next()
    plain = DPOObjective(0.1).loss(model, batch)
    mixed = DPOObjective(0.1, pretrain_weight=0.5).loss(model, batch)
    windows = {"input_ids": batch["pretrain_input_ids"], "labels": batch["pretrain_labels"]}
    nll = CausalLMObjective().loss(model, windows)
    mean_nll = nll.loss_sum / nll.count
    assert mixed.count == plain.count == 2
    torch.testing.assert_close(mixed.loss_sum, plain.loss_sum + 2 * 0.5 * mean_nll)
    torch.testing.assert_close(mixed.metrics["pretrain_nll"], mean_nll)


def _val_loss(model, val: np.ndarray) -> float:
    obj, total, count = CausalLMObjective(), 0.0, 0
    with torch.no_grad():
        for batch in val_batches(val, 8, SEQ, 8 * SEQ * 4):
            out = obj.loss(model, batch)
            total, count = total + float(out.loss_sum), count + int(out.count)
    return total / count


def _fit(model, loader, steps: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    obj = CausalLMObjective()
    for _ in range(steps):
        out = obj.loss(model, loader.next())
        (out.loss_sum / out.count).backward()
        opt.step()
        opt.zero_grad()


def test_mixing_pretraining_windows_keeps_the_plain_text_loss(corpus):
    """SFT on short answers alone lets the val loss of plain text drift up; with a quarter of the rows
    pretraining windows it stays within 10% of the pretrained model's (the recipe's promise)."""
    run, tok, tasks = corpus
    tokens = pretrain_tokens(run, tok)
    val = load_tokens(run / "tokens", "val")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, d_model=64, n_head=4, vocab_size=tok.vocab_size,
                                    max_seq_len=SEQ))
    _fit(model, PretrainLoader(tokens, 8, SEQ, 0), 150, 3e-3)
    pretrained = _val_loss(model, val)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    examples = sft_examples(tasks.sft, tok, SEQ)
    losses = {}
    for fraction in (0.0, 0.25):
        model.load_state_dict(state)
        sft = SFTLoader(examples, 8, SEQ, 0, tok.special_ids["<|eos|>"])
        loader = SFTMixLoader(sft, PretrainWindows(tokens, SEQ, 0), fraction, 8) if fraction else sft
        _fit(model, loader, 80, 3e-3)
        losses[fraction] = _val_loss(model, val)
    assert losses[0.0] > 1.1 * pretrained, (pretrained, losses)  # forgetting without the mixture
    assert losses[0.25] < 1.1 * pretrained, (pretrained, losses)
