"""The generation engine: KV-cache decoding, batching, streaming text, stop strings, chat.

How a call runs:
  1. Prompts (token ids) are sorted by length and cut into batches of `max_batch_size`.
  2. Prefill: a batch is left-padded to its longest prompt and run through the model once,
     filling the KV cache. Padded rows get explicit `positions` (each prompt starts at 0) and a
     boolean attention mask that hides the padding; unpadded batches take the plain causal path.
  3. Decode: one token per row per step, each step a single-token forward against the cache.
     Rows that finish are dropped from the batch (and from the cache) so the rest run faster.
     With `compile=True` a step is one `torch.compile`d graph of static shapes instead
     (`lmforge.inference.static_decode`), and finished rows stay in the batch, ignored.
  4. Text: every row keeps an incremental detokenizer (it holds back bytes of an unfinished
     UTF-8 character, so every delta is valid text) and a stop-string matcher (it holds back a
     tail that could still become a stop string, so no part of one is ever emitted).

Context overflow: a prompt longer than `max_seq_len - 1` tokens keeps its last
`max_seq_len - 1` tokens (a warning is logged); a row that fills the context window ends
with finish_reason "length". Stop tokens end a row with finish_reason "stop"; the stop token
stays in `token_ids` (training code wants it) but never in `text`.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.inference.kv_cache import KVCache, StaticKVCache, static_cache_length
from lmforge.inference.sampling import SamplingParams, TokenLogprob, make_generators, sample_next
from lmforge.inference.static_decode import CompiledDecodeStep

log = logging.getLogger("lmforge.inference")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    # Filled by the continuous-batching scheduler when asked for: one per token of token_ids
    # (a final stop token excepted), and one per prompt token (the first is None: nothing before it).
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


class IncrementalDetokenizer:
    """Token ids in, valid UTF-8 text deltas out.

    Token bytes go through an incremental UTF-8 decoder, which holds back the bytes of a
    character that is not complete yet; invalid bytes become U+FFFD as in `Tokenizer.decode`,
    so the deltas of a sequence join to exactly `tokenizer.decode(ids)`.
    """

    def __init__(self, tokenizer) -> None:
        self.id_to_bytes = tokenizer.id_to_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(self.id_to_bytes(token_id))

    def flush(self) -> str:
        """Whatever is held back (an incomplete character decodes to U+FFFD)."""
        return self.decoder.decode(b"", final=True)


class StopMatcher:
    """Cuts text at the first stop string; holds back a tail that may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """-> (text safe to emit, whether a stop string was found)."""
        buf = self.pending + delta
        if not self.stops:
            self.pending = ""
            return buf, False
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        hold = len(buf)
        for j in range(max(0, len(buf) - max(map(len, self.stops)) + 1), len(buf)):
            tail = buf[j:]
            if any(s.startswith(tail) for s in self.stops):
                hold = j
                break
        self.pending = buf[hold:]
        return buf[:hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


class Row:
    """The state of one sequence being generated."""

    def __init__(
        self, index: int, prompt: list[int], budget: int, tokenizer, stops: list[str], stop_ids: set[int]
    ) -> None:
        self.index = index
        self.stop_ids = stop_ids
        self.prompt = prompt
        self.budget = budget  # new tokens allowed (max_new_tokens, capped by the context window)
        self.ids: list[int] = []
        self.text: list[str] = []
        self.detok = IncrementalDetokenizer(tokenizer)
        self.matcher = StopMatcher(stops)
        self.finish_reason: str | None = None

    def add(self, token: int) -> str:
        """Append a sampled token; return the text it releases (maybe empty)."""
        self.ids.append(token)
        if token in self.stop_ids:
            return self._finish("stop")
        delta, stopped = self.matcher.feed(self.detok.push(token))
        self.text.append(delta)
        if stopped:
            self.finish_reason = "stop"
        elif len(self.ids) >= self.budget:
            return delta + self._finish("length")
        return delta

    def _finish(self, reason: str) -> str:
        self.finish_reason = reason
        delta, stopped = self.matcher.feed(self.detok.flush())
        if not stopped:
            delta += self.matcher.flush()
        self.text.append(delta)
        return delta

    def completion(self) -> Completion:
        return Completion(
            "".join(self.text), self.ids, self.finish_reason or "length", len(self.prompt), len(self.ids)
        )


class TextStream:
    """An iterator of text deltas; after it is exhausted, `.completion` holds the whole result."""

    def __init__(self, events: Iterator[list[tuple[int, str]]], rows: list[Row]) -> None:
        self._events = events
        self._rows = rows
        self.completion: Completion | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        for step in self._events:
            text = "".join(delta for _, delta in step)
            if text:
                return text
        self.completion = self._rows[0].completion()
        raise StopIteration

    def close(self) -> None:
        """Stop generating early (e.g. the reader went away); `.completion` holds what was made."""
        self._events.close()
        self.completion = self._rows[0].completion()


class Engine:
    """Generation for a `Transformer` and its `Tokenizer` (see the module docstring)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 32, compile: bool = False) -> None:
        """`compile=True` decodes with one `torch.compile`d step of static shapes
        (`lmforge.inference.static_decode`): faster per token, but each new batch size and cache
        length compiles first (`compile_seconds`), and weights are frozen at that point."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_seq_len = model.cfg.max_seq_len
        self.decode_step = CompiledDecodeStep(model) if compile else None

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling decode steps so far (0 without `compile`)."""
        return self.decode_step.compile_seconds if self.decode_step else 0.0

    # ---- public API -------------------------------------------------------------------------

    def encode_prompt(self, text: str) -> list[int]:
        """A text prompt as the start of a document: token shards put <|eos|> after every
        document, so in pretraining a document starts right after <|eos|>. Special-token
        strings in `text` are plain text here."""
        eos = getattr(self.tokenizer, "eos_id", None)
        return ([eos] if eos is not None else []) + self.tokenizer.encode_ordinary(text)

    def generate(
        self,
        prompts: list[list[int]] | list[str],
        params: SamplingParams | None = None,
        progress: bool = False,
    ) -> list[Completion]:
        """Completions for token-id prompts (or text prompts, encoded with `encode_prompt`), batched.

        `progress` shows a bar over the prompts (on stderr)."""
        params = params or SamplingParams()
        prompts = [self.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts]
        rows = self.new_rows(prompts, params)
        seeds = self.seeds(params, len(rows))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
        with tqdm(total=len(rows), unit="prompt", disable=not progress, desc="generate") as bar:
            for start in range(0, len(order), self.max_batch_size):
                batch = [rows[i] for i in order[start : start + self.max_batch_size]]
                for _ in self._decode(batch, params, seeds):
                    pass
                bar.update(len(batch))
        return [r.completion() for r in rows]

    def stream(self, prompt_ids: list[int] | str, params: SamplingParams | None = None) -> TextStream:
        """Text deltas of one completion as they are produced."""
        return self._stream(prompt_ids, params, extra_stop_ids=())

    def chat(self, messages: list[dict], params: SamplingParams | None = None) -> Completion:
        """The assistant's reply to `messages` ([{"role", "content"}]); ends at <|end|>."""
        stream = self.stream_chat(messages, params)
        for _ in stream:
            pass
        return stream.completion

    def stream_chat(self, messages: list[dict], params: SamplingParams | None = None) -> TextStream:
        ids, _ = self.tokenizer.render_chat(messages, add_generation_prompt=True)
        end = self.tokenizer.special_ids.get("<|end|>")
        return self._stream(list(ids), params, extra_stop_ids=() if end is None else (end,))

    # ---- internals --------------------------------------------------------------------------

    def _stream(self, prompt, params, extra_stop_ids) -> TextStream:
        params = params or SamplingParams()
        prompt = self.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        rows = self.new_rows([prompt], params, extra_stop_ids)
        return TextStream(self._decode(rows, params, self.seeds(params, 1)), rows)

    def _stops(self, params: SamplingParams) -> set[int]:
        stops = set(params.stop_token_ids)
        eos = getattr(self.tokenizer, "eos_id", None)
        if eos is not None and not params.ignore_eos:
            stops.add(eos)
        return stops

    def new_rows(
        self, prompts: list[list[int]], params: SamplingParams, extra_stop_ids=()
    ) -> list[Row]:
        """The generation state of each prompt: the context-overflow policy applied, its token
        budget set, its stop tokens (<|eos|> unless `ignore_eos`, `params.stop_token_ids`, extras)."""
        stop_ids = self._stops(params) | set(extra_stop_ids)
        limit = self.max_seq_len
        rows = []
        for i, p in enumerate(prompts):
            if not p:
                raise LmforgeError(f"prompt {i} is empty: give at least one token")
            if len(p) > limit - 1:
                log.warning(
                    "prompt %d has %d tokens; the model's context is %d: keeping the last %d",
                    i,
                    len(p),
                    limit,
                    limit - 1,
                )
                p = p[-(limit - 1) :]
            rows.append(
                Row(i, p, min(params.max_new_tokens, limit - len(p)), self.tokenizer, params.stop, stop_ids)
            )
        return rows

    @staticmethod
    def seeds(params: SamplingParams, n: int) -> list[int]:
        """The seeds of a call's n prompts: seed + i (a seed drawn from torch's RNG when None)."""
        base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        return [base + i for i in range(n)]

    @torch.inference_mode()
    def _decode(
        self, rows: list[Row], params: SamplingParams, seeds: list[int]
    ) -> Iterator[list[tuple[int, str]]]:
        """Generate `rows` together; yields [(row index, text delta)] once per step."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            yield from self._decode_rows(rows, params, seeds)
        finally:
            model.train(was_training)

    def _decode_rows(self, rows: list[Row], params: SamplingParams, seeds: list[int]):
        for r in rows:
            if r.budget <= 0:
                r.finish_reason = "length"
        rows = [r for r in rows if r.finish_reason is None]
        if not rows:
            return
        model = self.model
        param = next(model.parameters())
        device = param.device
        gens = None if params.greedy else make_generators([seeds[r.index] for r in rows], device)
        lens = torch.tensor([len(r.prompt) for r in rows], device=device)
        L = int(lens.max())
        steps = max(r.budget for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, L - len(r.prompt) :] = torch.tensor(r.prompt)
        ids = ids.to(device)
        if self.decode_step is not None:
            S = static_cache_length(L + steps)
            cache = StaticKVCache(model.cfg, len(rows), S, device, param.dtype)
        else:
            S = L + steps
            cache = KVCache.for_model(model, len(rows), S)
        pads = L - lens
        valid = torch.arange(S, device=device)[None, :] >= pads[:, None]  # [B, S]: False on padding
        positions = mask = None
        if bool((pads > 0).any()):
            positions = (torch.arange(L, device=device)[None, :] - pads[:, None]).clamp(min=0)
            causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
            eye = torch.eye(L, dtype=torch.bool, device=device)
            # Padding rows attend to themselves only, so their (unused) states stay finite.
            mask = ((causal & valid[:, None, :L]) | eye)[:, None]
        hidden = model(ids, cache=cache, start_pos=0, positions=positions, attn_mask=mask, return_hidden=True)
        logits = model.logits(hidden[:, -1])
        if self.decode_step is not None:
            yield from self._decode_static(rows, logits, params, gens, cache, L, pads, valid)
        else:
            yield from self._decode_eager(rows, logits, params, gens, cache, L, pads, valid)

    @staticmethod
    def _advance(rows: list[Row], tokens: list[int]) -> tuple[list[tuple[int, str]], list[int]]:
        """Give each unfinished row its token: -> (text events, batch indices still unfinished)."""
        events, keep = [], []
        for b, (r, tok) in enumerate(zip(rows, tokens)):
            if r.finish_reason is not None:
                continue
            delta = r.add(tok)
            if delta:
                events.append((r.index, delta))
            if r.finish_reason is None:
                keep.append(b)
        return events, keep

    def _decode_eager(self, rows, logits, params, gens, cache, L, pads, valid):
        """Decode steps against a growing `KVCache`; finished rows leave the batch."""
        device = logits.device
        padded = bool((pads > 0).any())
        positions = mask = None
        pos = L
        while True:
            tokens = sample_next(logits, params, gens).tolist()
            events, keep = self._advance(rows, tokens)
            yield events
            if not keep:
                return
            if len(keep) < len(rows):  # drop finished rows from the batch and the cache
                idx = torch.tensor(keep, device=device)
                rows = [rows[b] for b in keep]
                cache.keep_rows(idx)
                pads, valid = pads[idx], valid[idx]
                tokens = [tokens[b] for b in keep]
                if gens is not None:
                    gens = [gens[b] for b in keep]
            x = torch.tensor(tokens, device=device)[:, None]
            if padded:
                positions = (pos - pads)[:, None]
                mask = valid[:, None, None, : pos + 1]
            logits = self.model(x, cache=cache, start_pos=pos, positions=positions, attn_mask=mask)[:, -1]
            pos += 1

    def _decode_static(self, rows, logits, params, gens, cache, L, pads, valid):
        """Decode steps of the compiled static-shape step; finished rows stay (ignored) in the batch.
        A step attends over the first `window` cache slots, the slots used so far rounded up to a
        power of two, so early steps do not pay for the whole context."""
        device = logits.device
        pos, view = L, cache
        while True:
            tokens = sample_next(logits, params, gens)
            events, keep = self._advance(rows, tokens.tolist())
            yield events
            if not keep:
                return
            window = min(static_cache_length(pos + 1), cache.max_len)
            if window != view.max_len:
                view = cache.window(window)
            logits = self.decode_step(
                tokens[:, None], torch.tensor([pos], device=device), pads, valid[:, :window], view
            )
            pos += 1


def generate(model, tokenizer, prompt: str, **sampling) -> str:
    """The completion text of one text prompt: `generate(model, tok, "To be", max_new_tokens=20)`."""
    return Engine(model, tokenizer).generate([prompt], SamplingParams(**sampling))[0].text
