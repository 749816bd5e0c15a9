"""The two KV caches the engine decodes with; both fit the model's `LayerKVCache` interface.

* `KVCache` (eager decoding): one [layers, B, H_kv, S, D] tensor for keys and one for values.
  A step attends over the positions written so far, and rows that finish are dropped
  (`keep_rows`), so the batch shrinks as it decodes.
* `StaticKVCache` (`Engine(compile=True)`, `lmforge.inference.static_decode`): one fixed
  [B, H_kv, S, D] tensor per layer, written at a position *tensor* so a compiled decode step
  never changes shape. One tensor per layer (not one [layers, ...] tensor) keeps the in-place
  write cheap: a write into a view of a bigger graph input makes inductor copy the whole
  input back.
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
