"""Sampling settings and the next-token sampler: temperature, top-k, top-p (nucleus), seeds.

The filters follow the usual definitions (the ones of Hugging Face's logits warpers):
top-k keeps the k highest logits (ties at the k-th value are all kept); top-p keeps the
smallest set of most likely tokens whose probabilities sum to at least p (always at least one).
Temperature 0 means greedy (argmax). Every row of a batch samples from its own seeded
`torch.Generator`, so a row's tokens do not depend on the other rows in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.errors import LmforgeError


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    `stop`: strings that end the completion; the text is cut before the first one and no part of
    a stop string is ever emitted. `stop_token_ids`: token ids that end it (the tokenizer's
    <|eos|> is always one unless `ignore_eos`; chat adds <|end|>). `seed`: None draws one from
    torch's global RNG (so `torch.manual_seed` still makes runs repeatable); prompt i of a call
    samples with seed + i, so repeated prompts in one call give different samples.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.max_new_tokens < 0:
            raise LmforgeError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LmforgeError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise LmforgeError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise LmforgeError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if any(not s for s in self.stop):
            raise LmforgeError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Scale logits [B, V] by 1/temperature and set the ones top-k / top-p remove to -inf."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
        remove_sorted = mass_before >= top_p
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def make_generators(seeds: list[int], device: torch.device | str) -> list[torch.Generator]:
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(s)
        gens.append(g)
    return gens


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator] | None = None
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]; row i draws from generators[i] when sampling."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, params.temperature, params.top_k, params.top_p).softmax(dim=-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])


@dataclass
class TokenLogprob:
    """A token's log-probability under the model, and the `top` most likely tokens at its place.

    Log-probabilities are of the model's own distribution (log-softmax of its logits), before
    temperature, top-k or top-p, so they do not depend on how the token was picked."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprob]:
    """One TokenLogprob per row: logits [N, V], the tokens taken [N], k alternatives each."""
    logprobs = logits.float().log_softmax(dim=-1)
    chosen = logprobs.gather(-1, tokens[:, None]).squeeze(-1).tolist()
    if k > 0:
        top_values, top_ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(top_ids.tolist(), top_values.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(tokens.tolist(), chosen, tops)]
