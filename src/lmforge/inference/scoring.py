"""Log-likelihood scoring, exactly as lm-eval's HFLM computes it.

* `loglikelihoods(model, tok, [(context, continuation)])` -> [(sum log p(continuation | context),
  is_greedy)]. The pair is encoded the lm-eval way (`encode_pair`): trailing spaces of the
  context move into the continuation, context + continuation is encoded whole and the
  continuation is `whole[len(encode(context)):]`; an empty context becomes the prefix token
  (BOS, else EOS).
* `token_loglikelihoods(model, [(context_ids, continuation_ids)])` for pre-tokenized requests.
* `rolling_loglikelihoods(model, tok, texts)` -> [sum log p(text)] with lm-eval's disjoint rolling
  windows (`get_rolling_token_windows` + `make_disjoint_window`, context_len 1), the basis of
  perplexity and bits per byte on long documents.

Inputs longer than the model's context keep their last `max_seq_len + 1` tokens (cropped from the
left) and drop the final one as input, like HFLM. Batches are right-padded (causal attention makes
the padding invisible to real tokens) and sorted longest first; the LM head runs only on the
positions being scored, so long batches do not materialise [B, T, vocab] logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from lmforge.tokenizer import Tokenizer

Pair = tuple[Sequence[int], Sequence[int]]


def prefix_token_id(tokenizer: Tokenizer) -> int:
    """The token that stands in for an empty context (lm-eval: BOS, else EOS)."""
    for tid in (tokenizer.bos_id, tokenizer.eos_id):
        if tid is not None:
            return tid
    raise ValueError("the tokenizer has neither <|bos|> nor <|eos|>; cannot score an empty context")


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `TemplateLM._encode_pair` (+ the empty-context rule of `loglikelihood`)."""
    if context == "":
        return [prefix_token_id(tokenizer)], tokenizer.encode_ordinary(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode_ordinary(context + continuation)
    context_enc = tokenizer.encode_ordinary(context)
    return context_enc, whole[len(context_enc) :]


def get_rolling_token_windows(
    token_list: Sequence[int], prefix_token: int, max_seq_len: int, context_len: int = 1
) -> Iterator[tuple[list[int], list[int]]]:
    """lm-eval's rolling windows: (input, predicted) pairs whose predictions are disjoint and
    together cover every token once. The first input is [prefix] + tokens[:L-1]."""
    if not 1 <= context_len <= max_seq_len:
        raise ValueError(f"context_len must be in [1, {max_seq_len}], got {context_len}")
    token_list = list(token_list)
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first - 1], token_list[:first]
    predicted = first
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def make_disjoint_window(pair: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """Trim the input so it ends where the predictions begin: (context, continuation)."""
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def model_max_len(model: torch.nn.Module) -> int:
    return int(model.cfg.max_seq_len)


def score_tokens(
    model: torch.nn.Module, pairs: Sequence[Pair], batch_size: int = 16, max_len: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-token log-probs (float64) and greedy flags (bool) of each pair's continuation.

    A continuation longer than the context window is scored on its last `max_len` tokens only.
    """
    import torch

    max_len = max_len or model_max_len(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(pairs)
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        cont = list(cont)
        if not cont:
            out[i] = (np.zeros(0), np.zeros(0, dtype=bool))
            continue
        whole = (list(ctx) + cont)[-(max_len + 1) :]
        inp = whole[:-1]
        if not inp:
            raise ValueError(f"request {i}: an empty context cannot predict its first token; give a prefix")
        n = min(len(cont), len(inp))
        rows.append((i, inp, cont[-n:]))
    rows.sort(key=lambda r: -len(r[1]))
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                width = len(chunk[0][1])
                batch = torch.zeros(len(chunk), width, dtype=torch.long)
                for r, (_, inp, _) in enumerate(chunk):
                    batch[r, : len(inp)] = torch.tensor(inp, dtype=torch.long)
                hidden = model(batch.to(device), return_hidden=True)
                picked = torch.cat(
                    [hidden[r, len(inp) - len(cont) : len(inp)] for r, (_, inp, cont) in enumerate(chunk)]
                )
                logprobs = model.logits(picked).float().log_softmax(-1)
                targets = torch.tensor([t for _, _, cont in chunk for t in cont], device=logprobs.device)
                token_lp = logprobs.gather(-1, targets[:, None]).squeeze(-1).double().cpu().numpy()
                greedy = (logprobs.argmax(-1) == targets).cpu().numpy()
                offset = 0
                for i, _, cont in chunk:
                    out[i] = (token_lp[offset : offset + len(cont)], greedy[offset : offset + len(cont)])
                    offset += len(cont)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def token_loglikelihoods(
    model: torch.nn.Module, requests: Sequence[Pair], batch_size: int = 16
) -> list[tuple[float, bool]]:
    """[(sum of continuation log-probs, every continuation token is the argmax)] for token ids."""
    return [(float(lp.sum()), bool(g.all())) for lp, g in score_tokens(model, requests, batch_size)]


def loglikelihoods(
    model: torch.nn.Module, tokenizer: Tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16
) -> list[tuple[float, bool]]:
    """lm-eval's `loglikelihood`: requests are (context, continuation) strings."""
    pairs = [encode_pair(tokenizer, ctx, cont) for ctx, cont in requests]
    return token_loglikelihoods(model, pairs, batch_size)


def rolling_windows(token_list: Sequence[int], prefix_token: int, max_len: int) -> list[Pair]:
    return [make_disjoint_window(w) for w in get_rolling_token_windows(token_list, prefix_token, max_len, 1)]


def rolling_token_logprobs(
    model: torch.nn.Module, token_list: Sequence[int], prefix_token: int, batch_size: int = 16
) -> np.ndarray:
    """Log-prob of every token of a long sequence under lm-eval's disjoint rolling windows."""
    windows = rolling_windows(token_list, prefix_token, model_max_len(model))
    scored = score_tokens(model, windows, batch_size)
    return np.concatenate([lp for lp, _ in scored]) if scored else np.zeros(0)


def rolling_loglikelihoods(
    model: torch.nn.Module, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 16
) -> list[float]:
    """lm-eval's `loglikelihood_rolling`: the whole text's log-prob, conditioned only on the prefix.
    The windows of all texts are batched together."""
    prefix, max_len = prefix_token_id(tokenizer), model_max_len(model)
    owners, windows = [], []
    for i, text in enumerate(texts):
        for w in rolling_windows(tokenizer.encode_ordinary(text), prefix, max_len):
            owners.append(i)
            windows.append(w)
    totals = [0.0] * len(texts)
    for owner, (lp, _) in zip(owners, score_tokens(model, windows, batch_size)):
        totals[owner] += float(lp.sum())
    return totals
