"""Causal, document-masked attention on one device: the local path of the model's attention dispatcher.

Why not HF's SDPA path: packed sequences (several documents, and right padding as its own document) must never
attend across documents, and HF would otherwise build an O(S^2) float mask per layer. Documents come from the
``position_ids`` HF already forwards to attention (segment id = cumsum(position_ids == 0)); the model passes
``attention_mask={"full_attention": None}`` so HF builds no mask at all. A packed row is split into its documents
by the same rule the sequence-parallel block backends use (``document_pieces`` in
``longvila/distributed/document_split.py``), and each document runs SDPA's mask-free causal kernel.

The dispatcher that calls this (``longvila/distributed/attention.py:AttentionDispatcher``) is what the model is
given; this module only computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .block_contract import expand_kv
from .document_split import document_pieces, segment_ids

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA enable_gqa since 2.5


def has_multiple_segments(position_ids: torch.Tensor | None) -> bool:
    """True when some row restarts its positions after the first token (packing or right padding)."""
    return position_ids is not None and position_ids.shape[-1] > 1 and bool((position_ids[..., 1:] == 0).any())


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None, position_ids: torch.Tensor | None
) -> torch.Tensor:
    """Causal, document-masked attention on one device: q (B,Hq,S,D), k/v (B,Hkv,S,D) -> (B,S,Hq,D).

    With a single document per row we use ``is_causal=True`` (flash/efficient kernels, no mask); packed or padded
    rows are split into their documents. Fewer queries than keys (a KV-cache decode step) align the causal mask
    bottom-right.
    """
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv != 0:
        raise ValueError(f"query heads {hq} not a multiple of key/value heads {hkv}")
    if position_ids is not None and position_ids.dim() == 1:
        position_ids = position_ids[None]
    sq, sk = q.shape[2], k.shape[2]
    if sq != sk:
        # Decoding with a KV cache (generate): the queries are the LAST sq positions of the keys, so the causal
        # mask is bottom-right aligned (SDPA's is_causal would align it top-left). One document only.
        if sq > sk:
            raise ValueError(f"more queries ({sq}) than keys ({sk})")
        mask, causal = (None if sq == 1 else torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)), False
    elif has_multiple_segments(position_ids):
        return _per_document_attention(q, k, v, scale=scale, position_ids=position_ids)
    else:
        mask, causal = None, True
    extra = {}
    if hq != hkv:
        if _SDPA_HAS_GQA:
            extra["enable_gqa"] = True
        else:
            k, v = expand_kv(k, hq // hkv), expand_kv(v, hq // hkv)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, **extra)
    return out.transpose(1, 2).contiguous()


def _per_document_attention(q, k, v, *, scale, position_ids) -> torch.Tensor:
    """Packed rows: causal SDPA on each document separately.

    Costs sum(len_doc^2) instead of the S^2 of a block-diagonal mask, and keeps SDPA on its fused (mask-free)
    kernels; a 4K-token packed row of 1K-token documents runs about 4x less attention work.
    """
    seg = segment_ids(position_ids)
    rows = []
    for b, pieces in enumerate(document_pieces(seg, seg, causal=True)):
        rows.append(torch.cat([
            local_attention(q[b : b + 1, :, qs:qe], k[b : b + 1, :, ks:ke], v[b : b + 1, :, ks:ke], scale=scale,
                            position_ids=None)
            for qs, qe, ks, ke in pieces
        ], dim=1))
    return torch.cat(rows, dim=0)
