"""The KV caches inference decodes with; all fit the model's `LayerKVCache` interface.

* `KVCache` (eager decoding): one [layers, B, H_kv, S, D] tensor for keys and one for values.
  A step attends over the positions written so far, and rows that finish are dropped
  (`keep_rows`), so the batch shrinks as it decodes.
* `StaticKVCache` (`Engine(compile=True)`, `lmforge.inference.static_decode`): one fixed
  [B, H_kv, S, D] tensor per layer, written at a position *tensor* so a compiled decode step
  never changes shape. One tensor per layer (not one [layers, ...] tensor) keeps the in-place
  write cheap: a write into a view of a bigger graph input makes inductor copy the whole
  input back.
* `SlotKVCache` (continuous batching, `lmforge.inference.scheduler`): one slot per running
  sequence, each sequence at its own position.
"""

from __future__ import annotations

import torch


def static_cache_length(n: int) -> int:
    """Static cache positions for n tokens: the next power of two, at least 64, so calls of
    similar lengths share one compiled step."""
    return max(64, 1 << (n - 1).bit_length())


class KVCache:
    """Keys and values of every layer for `batch_size` sequences of up to `max_len` tokens."""

    def __init__(self, cfg, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int) -> KVCache:
        """A cache on the model's device, in its parameters' dtype."""
        p = next(model.parameters())
        return cls(model.cfg, batch_size, max_len, p.device, p.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int):
        """Store k, v [B, H_kv, T, D] at positions start_pos.. and return all keys/values so far."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.k[layer, :, :, start_pos:end] = k
        self.v[layer, :, :, start_pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (indices, in the new order); the others are dropped."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


class StaticKVCache:
    """Per-layer keys and values of a fixed length, for the compiled decode step."""

    def __init__(self, cfg, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len

    def window(self, n: int) -> StaticKVCache:
        """The first n slots of every layer, as a cache that shares this one's memory."""
        view = object.__new__(StaticKVCache)
        view.k = [k[:, :, :n] for k in self.k]
        view.v = [v[:, :, :n] for v in self.v]
        view.max_len = n
        return view

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int | torch.Tensor):
        """Store k, v [B, H_kv, T, D] from start_pos on. An int start_pos (the prefill) returns the
        positions so far, as `KVCache` does; a position tensor (a compiled decode step, T = 1)
        returns the whole fixed-length cache, to be masked."""
        if isinstance(start_pos, torch.Tensor):
            self.k[layer].index_copy_(2, start_pos, k)
            self.v[layer].index_copy_(2, start_pos, v)
            return self.k[layer], self.v[layer]
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class SlotKVCache:
    """Keys and values for a running batch of independent sequences (continuous batching).

    One [layers, slots, H_kv, S, D] tensor each for keys and values; slot b holds one sequence
    from position 0 on, and sequences of different lengths share it. The scheduler keeps its
    running sequences in slots 0..n-1 (`move` fills the hole a finished one leaves), so a decode
    step reads the first n slots as a view, without a gather.
    """

    def __init__(self, cfg, slots: int, max_len: int, device=None, dtype=torch.float32):
        shape = (cfg.n_layer, slots, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len

    @classmethod
    def for_model(cls, model, slots: int, max_len: int) -> SlotKVCache:
        p = next(model.parameters())
        return cls(model.cfg, slots, max_len, p.device, p.dtype)

    def slot(self, b: int) -> _OneSlot:
        """A batch-of-one cache writing into slot b (a prefill)."""
        return _OneSlot(self, b)

    def first(self, n: int, window: int) -> _FirstSlots:
        """A cache for one decode step of slots 0..n-1, each writing at its own position and
        attending over the first `window` positions (to be masked per row)."""
        return _FirstSlots(self, n, window)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot src into slot dst."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class _OneSlot:
    def __init__(self, cache: SlotKVCache, b: int) -> None:
        self.cache, self.b = cache, b

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int):
        end = start_pos + k.shape[2]
        if end > self.cache.max_len:
            raise ValueError(f"KV cache holds {self.cache.max_len} positions; asked for {end}")
        rows = slice(self.b, self.b + 1)
        self.cache.k[layer, rows, :, start_pos:end] = k
        self.cache.v[layer, rows, :, start_pos:end] = v
        return self.cache.k[layer, rows, :, :end], self.cache.v[layer, rows, :, :end]


class _FirstSlots:
    def __init__(self, cache: SlotKVCache, n: int, window: int) -> None:
        self.cache, self.n, self.window = cache, n, window
        self.rows = torch.arange(n, device=cache.k.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: torch.Tensor):
        """k, v [n, H_kv, 1, D]; start_pos [n]: the position each row's token goes to."""
        self.cache.k[layer, self.rows, :, start_pos] = k[:, :, 0]
        self.cache.v[layer, self.rows, :, start_pos] = v[:, :, 0]
        n, window = self.n, self.window
        return self.cache.k[layer, :n, :, :window], self.cache.v[layer, :n, :, :window]
