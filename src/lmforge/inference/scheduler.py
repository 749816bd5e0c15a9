"""Continuous batching: a running batch of independent sequences that share every decode step.

`Engine.generate` decodes a fixed batch from start to end; a request that arrives meanwhile
waits for the whole batch. The `Scheduler` instead keeps a running batch of up to `max_batch`
sequences, each in its own slot of a `SlotKVCache` and at its own position. One `step()`:

  1. decodes one token for every running sequence, in one forward pass (per-row positions and
     a per-row mask over the cache: each row attends over its own positions only);
  2. lets finished and cancelled sequences leave (the last slot moves into the hole, so the
     running rows stay in slots 0..n-1);
  3. admits waiting sequences into the free slots: each is prefilled alone and samples its
     first token, and decodes with the others from the next step on.

A sequence's tokens are the ones `Engine.generate` gives its request alone: the same prefill,
the same sampling (its own generator, seeded seed + i as the engine seeds prompt i of a call),
the same stop rules (`engine.Row`); only the float rounding of the batched products differs.
With `logprobs` a sequence records each token's log-probability and the k most likely tokens;
with `echo`, the log-probabilities of its prompt tokens too, from the prefill's logits.
The scheduler is single-threaded: the server's worker thread owns it.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import torch

from lmforge.inference.engine import Completion, Engine, Row
from lmforge.inference.kv_cache import SlotKVCache
from lmforge.inference.sampling import (
    SamplingParams,
    TokenLogprob,
    make_generators,
    sample_next,
    token_logprobs,
)


class Sequence:
    """One prompt's generation inside the scheduler."""

    def __init__(
        self, row: Row, params: SamplingParams, seed: int, logprobs: int | None, echo: bool, device
    ) -> None:
        self.row, self.params = row, params
        self.generator = None if params.greedy else make_generators([seed], device)[0]
        self.top_k = logprobs  # alternatives per token; None: no log-probabilities
        self.echo = echo
        self.length = 0  # positions of its KV slot filled
        self.next_token: int | None = None  # sampled, not in the cache yet
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.cancelled = False

    @property
    def finished(self) -> bool:
        return self.row.finish_reason is not None

    def completion(self) -> Completion:
        c = self.row.completion()
        if self.top_k is not None:
            c.logprobs = self.logprobs
        c.prompt_logprobs = self.prompt_logprobs
        return c


class StepEvent(NamedTuple):
    """What one step did for a sequence: the text it released and the token's log-probability
    (None when not asked for, or for a stop token); `sequence.finished` says whether it ended."""

    sequence: Sequence
    text: str
    logprob: TokenLogprob | None


class Scheduler:
    """A running batch of up to `max_batch` sequences on `engine`'s model (see the module docstring)."""

    def __init__(self, engine: Engine, max_batch: int) -> None:
        self.engine, self.max_batch = engine, max_batch
        self.model = engine.model
        self.device = next(self.model.parameters()).device
        self.cache: SlotKVCache | None = None  # allocated on first use: max_batch x the context
        self.running: list[Sequence] = []  # running[b] lives in slot b
        self.waiting: deque[Sequence] = deque()
        self.steps = 0

    def add(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        logprobs: int | None = None,
        echo: bool = False,
    ) -> list[Sequence]:
        """Queue a request's prompts (token ids); they join the running batch at the next step
        with a free slot. Prompt i samples with seed + i, as in `Engine.generate`."""
        rows = self.engine.new_rows(prompts, params)
        seeds = self.engine.seeds(params, len(rows))
        seqs = [Sequence(r, params, s, logprobs, echo, self.device) for r, s in zip(rows, seeds)]
        self.waiting.extend(seqs)
        return seqs

    def cancel(self, seq: Sequence) -> None:
        """Stop generating `seq`; its slot is freed at the next step."""
        seq.cancelled = True

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def reset(self) -> None:
        """Forget every sequence (after a failed step)."""
        self.running.clear()
        self.waiting.clear()

    @torch.inference_mode()
    def step(self) -> list[StepEvent]:
        """One decode step for the running batch, then admission of waiting sequences."""
        was_training = self.model.training
        self.model.eval()
        try:
            self._leave()
            events = self._decode() if self.running else []
            self._leave()
            while self.waiting and len(self.running) < self.max_batch:
                seq = self.waiting.popleft()
                if not seq.cancelled:
                    events.append(self._admit(seq))
            self._leave()
            self.steps += 1
            return events
        finally:
            self.model.train(was_training)

    # ---- internals --------------------------------------------------------------------------

    def _leave(self) -> None:
        b = 0
        while b < len(self.running):
            if self.running[b].finished or self.running[b].cancelled:
                last = self.running.pop()
                if b < len(self.running):
                    self.cache.move(len(self.running), b, last.length)
                    self.running[b] = last
            else:
                b += 1

    def _admit(self, seq: Sequence) -> StepEvent:
        """Prefill `seq` alone into the next free slot and sample its first token."""
        row = seq.row
        if row.budget <= 0:
            row.finish_reason = "length"
            if not seq.echo:
                return StepEvent(seq, "", None)
        if self.cache is None:
            self.cache = SlotKVCache.for_model(self.model, self.max_batch, self.engine.max_seq_len)
        slot = len(self.running)
        self.running.append(seq)
        ids = torch.tensor([row.prompt], device=self.device)
        hidden = self.model(ids, cache=self.cache.slot(slot), start_pos=0, return_hidden=True)
        seq.length = len(row.prompt)
        if seq.echo:
            prompt_logits = self.model.logits(hidden[0, :-1])
            scored = token_logprobs(prompt_logits, ids[0, 1:], seq.top_k or 0)
            seq.prompt_logprobs = [None, *scored]
        if seq.finished:
            return StepEvent(seq, "", None)
        return self._take([seq], self.model.logits(hidden[:, -1]))[0]

    def _decode(self) -> list[StepEvent]:
        rows = self.running
        tokens = torch.tensor([[s.next_token] for s in rows], device=self.device)
        pos = torch.tensor([s.length for s in rows], device=self.device)
        window = int(pos.max()) + 1
        mask = (torch.arange(window, device=self.device)[None, :] <= pos[:, None])[:, None, None, :]
        view = self.cache.first(len(rows), window)
        logits = self.model(tokens, cache=view, start_pos=pos, positions=pos[:, None], attn_mask=mask)[:, -1]
        for s in rows:
            s.length += 1
        return self._take(rows, logits)

    def _take(self, seqs: list[Sequence], logits: torch.Tensor) -> list[StepEvent]:
        """Sample each sequence's next token from its row of logits [N, V] and record it."""
        picked = logits.argmax(dim=-1)
        for i, s in enumerate(seqs):
            if not s.params.greedy:
                picked[i] = sample_next(logits[i : i + 1], s.params, [s.generator])[0]
        wanted = [i for i, s in enumerate(seqs) if s.top_k is not None]
        scored = dict(zip(wanted, self._logprobs(logits, picked, wanted, seqs)))
        events = []
        for i, (s, token) in enumerate(zip(seqs, picked.tolist())):
            lp = None if token in s.row.stop_ids else scored.get(i)
            if lp is not None:
                s.logprobs.append(lp)
            events.append(StepEvent(s, s.row.add(token), lp))
            s.next_token = token
        return events

    @staticmethod
    def _logprobs(logits, picked, wanted: list[int], seqs: list[Sequence]) -> list[TokenLogprob]:
        if not wanted:
            return []
        k = max(seqs[i].top_k for i in wanted)
        idx = torch.tensor(wanted, device=logits.device)
        out = token_logprobs(logits[idx], picked[idx], k)
        for i, lp in zip(wanted, out):
            lp.top = lp.top[: seqs[i].top_k]
        return out
