"""Compiled single-token decoding with static shapes (the gpt-fast recipe), for `Engine(compile=True)`.

Eager decoding spends about half of a small model's step on per-op dispatch (norms, RoPE,
cache slicing), not on the matrix products. Here one decode step — embedding, every block,
final norm, LM head — is a single `torch.compile`d graph whose shapes never change while a
batch decodes:

  * `StaticKVCache` (`lmforge.inference.kv_cache`) holds every layer's keys/values in its own
    fixed [B, H_kv, S, D] tensor. The (eager) prefill writes positions 0..L-1 as usual; a
    decode step writes its token at a position *tensor* with `index_copy_` and attends over all
    S positions, with a boolean mask of the positions written so far.
  * S is the batch's prompt + new tokens rounded up to a power of two (`static_cache_length`),
    so calls of similar lengths reuse one compiled step. The engine passes a window of the
    first slots (`StaticKVCache.window`: the slots used so far, rounded up the same way), so
    early steps of a long generation attend over fewer slots; each window is one more compiled
    shape. Rows that finish stay in the batch (their tokens are ignored) instead of shrinking it.
  * Inductor runs with `freezing` (weights become constants, prepacked for the CPU GEMM
    kernels) and `max_autotune` with its C++ GEMM template, which on a CPU moves the
    matrix-vector products much closer to memory bandwidth than the default BLAS call.

Costs: each new (batch size, S, window, device, dtype) compiles once per process (tens of seconds
on a CPU, mostly autotuning; `CompiledDecodeStep.compile_seconds` sums them), and freezing keeps a
second, prepacked copy of the weights, taken when it compiles; an in-place change of the
weights afterwards (training) makes the next step compile again. Greedy tokens match eager
decoding (tested); the arithmetic is the same up to float rounding order.
"""

from __future__ import annotations

import logging
import time
import types

import torch

from lmforge.inference.kv_cache import StaticKVCache

log = logging.getLogger("lmforge.inference")

# Inductor settings of the compiled step (see the module docstring), patched in while it compiles
# (`torch.compile(options=...)` does not reach `freezing`). On CUDA the C++ GEMM template does not
# apply; inductor then autotunes its Triton / cuBLAS choices.
INDUCTOR_CONFIG = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "max_autotune_report_choices_stats": False,  # else every tuned product is printed to stderr
    "autotune_num_choices_displayed": 0,
}
MAX_COMPILED_SHAPES = 64  # dynamo's recompile limit for the step (its default, 8, is low here)


def _decode_forward(model, tokens, pos, pads, valid, cache):
    slots = torch.arange(valid.shape[1], device=valid.device)
    mask = (valid & (slots <= pos))[:, None, None, :]
    positions = (pos - pads)[:, None]
    return model(tokens, cache=cache, start_pos=pos, positions=positions, attn_mask=mask)[:, -1]


class CompiledDecodeStep:
    """`step(tokens [B, 1], pos [1], pads [B], valid [B, S], cache) -> logits [B, vocab]`.

    `pos` is the cache slot the tokens go to; row b's token sits at position pos - pads[b]
    (pads = each row's left padding) and attends to the slots <= pos where `valid` is True.

    Frozen weights are constants of the compiled graph, and dynamo caches graphs per code
    object, not per model state. So each instance compiles its own copy of the step's code,
    and recompiles (a fresh copy) when an in-place update of the weights (an optimizer step,
    `load_state_dict`) has bumped a parameter's version counter since it compiled.
    """

    def __init__(self, model, backend: str = "inductor") -> None:
        self.model = model
        self.backend = backend
        self.compile_seconds = 0.0
        self._params = list(model.parameters())
        self._fresh_step()

    def _fresh_step(self) -> None:
        code = _decode_forward.__code__.replace()  # a distinct code object: an empty dynamo cache
        fn = types.FunctionType(code, _decode_forward.__globals__, "decode_step")
        self._step = torch.compile(fn, backend=self.backend, fullgraph=True, dynamic=False)
        self._compiled_shapes: set[tuple] = set()
        self._versions = self._weight_versions()

    def _weight_versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self._params)

    def __call__(self, tokens, pos, pads, valid, cache: StaticKVCache) -> torch.Tensor:
        if self._weight_versions() != self._versions:
            log.info("the model's weights changed since the decode step compiled: compiling again")
            self._fresh_step()
        shape = (tuple(valid.shape), cache.k[0].stride(), str(tokens.device), cache.k[0].dtype)
        if shape in self._compiled_shapes:
            return self._step(self.model, tokens, pos, pads, valid, cache)
        t0 = time.perf_counter()
        with (
            torch._dynamo.config.patch(recompile_limit=MAX_COMPILED_SHAPES),
            torch._inductor.config.patch(INDUCTOR_CONFIG),
        ):
            logits = self._step(self.model, tokens, pos, pads, valid, cache)
        seconds = time.perf_counter() - t0
        self.compile_seconds += seconds
        self._compiled_shapes.add(shape)
        log.info("compiled the decode step for batch %d, cache %d in %.1fs", *valid.shape, seconds)
        return logits
