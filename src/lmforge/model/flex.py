"""Document masking through `flex_attention`: a BlockMask from per-token document ids (causal, and
within one document) and the attention call that takes it.

A dense boolean mask makes SDPA read all T x T scores; a BlockMask lets flex_attention skip the
blocks that cross a document boundary or lie above the diagonal. On CUDA the call is compiled
(flex_attention's fused kernel); elsewhere it runs eagerly, which is exact but no faster than SDPA.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


def document_mask_mod(doc_ids: torch.Tensor):
    """flex_attention's mask_mod for document ids [B, T]: query q sees key kv when kv <= q and
    both are in the same document."""

    def causal_same_document(b, h, q, kv):
        return (kv <= q) & (doc_ids[b, q] == doc_ids[b, kv])

    return causal_same_document


def document_block_mask(doc_ids: torch.Tensor) -> BlockMask:
    """The BlockMask [B, 1, T, T] of `document_mask_mod`, built on doc_ids' device."""
    B, T = doc_ids.shape
    return create_block_mask(document_mask_mod(doc_ids), B, None, T, T, device=doc_ids.device)


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """Attention of q [B, H, T, D] over k, v [B, H_kv, T, D] under `block_mask` (grouped-query
    heads shared as SDPA's enable_gqa shares them)."""
    # eager off CUDA; inside a compiled block (train.compile) the block's own compilation fuses it
    eager = not q.is_cuda or torch.compiler.is_compiling()
    attend = flex_attention if eager else _compiled_flex_attention()
    return attend(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
