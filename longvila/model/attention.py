"""The "longvila" attention implementation, registered with transformers' AttentionInterface.

Why a custom implementation: packed sequences (several documents, and right padding as its own document) must
never attend across documents, and HF would otherwise build an O(S^2) float mask per layer. Documents come from the
``position_ids`` kwarg HF already forwards to attention (segment id = cumsum(position_ids == 0)). The model passes
``attention_mask={"full_attention": None}`` so HF builds no mask at all.

Dispatch is deliberately one tiny function (``local_attention``) plus a module-level router hook: sequence
parallelism (Ulysses/ring) and Triton backends replace the computation via ``set_attention_router`` without
touching model code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_IMPLEMENTATION = "longvila"

_router: Callable | None = None
_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA enable_gqa since 2.5


def set_attention_router(fn: Callable | None) -> None:
    """Route every "longvila" attention call to ``fn`` (or back to ``local_attention`` with None).

    ``fn(module, q, k, v, *, scale, position_ids, **kwargs)`` gets q (B, Hq, S, D), k/v (B, Hkv, S, D) exactly as
    HF hands them over (RoPE applied, positions global) and must return the output as (B, S, Hq, D).
    """
    global _router
    if fn is not None and not callable(fn):
        raise ValueError(f"attention router must be callable or None, got {type(fn).__name__}")
    _router = fn


def get_attention_router() -> Callable | None:
    return _router


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document id per token: a new document starts wherever the position restarts at 0."""
    return torch.cumsum(position_ids == 0, dim=-1)


def has_multiple_segments(position_ids: torch.Tensor | None) -> bool:
    """True when some row restarts its positions after the first token (packing or right padding)."""
    return position_ids is not None and position_ids.shape[-1] > 1 and bool((position_ids[..., 1:] == 0).any())


def segment_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, S, S) mask: key <= query AND same document. Every row keeps at least its diagonal."""
    seg = segment_ids(position_ids)
    s = seg.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=seg.device).tril()
    return (causal & (seg[:, :, None] == seg[:, None, :]))[:, None]


def _expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None, position_ids: torch.Tensor | None
) -> torch.Tensor:
    """Causal, document-masked attention on one device: q (B,Hq,S,D), k/v (B,Hkv,S,D) -> (B,S,Hq,D).

    With a single document per row we use ``is_causal=True`` (flash/efficient kernels, no mask); only packed or
    padded batches pay for a boolean mask.
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
            k, v = _expand_kv(k, hq // hkv), _expand_kv(v, hq // hkv)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, **extra)
    return out.transpose(1, 2).contiguous()


def document_spans(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each document in one row of positions (a document starts where the position is 0)."""
    starts = torch.nonzero(position_ids == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], position_ids.numel()]))


def _per_document_attention(q, k, v, *, scale, position_ids) -> torch.Tensor:
    """Packed rows: causal SDPA on each document separately.

    Costs sum(len_doc^2) instead of the S^2 of a block-diagonal mask, and keeps SDPA on its fused (mask-free)
    kernels; a 4K-token packed row of 1K-token documents runs about 4x less attention work.
    """
    rows = []
    for b in range(q.shape[0]):
        pieces = [
            local_attention(q[b : b + 1, :, s:e], k[b : b + 1, :, s:e], v[b : b + 1, :, s:e], scale=scale,
                            position_ids=None)
            for s, e in document_spans(position_ids[b])
        ]
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0)


def longvila_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """AttentionInterface entry point; returns ((B, S, H, D), None) as HF expects."""
    if attention_mask is not None:
        raise ValueError(
            "longvila attention takes documents from position_ids; pass attention_mask={'full_attention': None}"
        )
    if dropout:
        raise ValueError(f"longvila attention does not support attention dropout (got {dropout})")
    position_ids = kwargs.pop("position_ids", None)
    if _router is not None and query.shape[2] == key.shape[2]:
        # Only square calls are routed. A KV-cache decode step (fewer queries than cached keys) runs locally:
        # the routed sequence-parallel and block backends attend over square blocks of a whole sequence, and
        # cached decoding only runs unsharded.
        return _router(module, query, key, value, scale=scaling, position_ids=position_ids, **kwargs), None
    return local_attention(query, key, value, scale=scaling, position_ids=position_ids), None


def register() -> None:
    """Idempotent registration (the module registers itself on import; every process imports it via the model)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, longvila_attention)


register()
