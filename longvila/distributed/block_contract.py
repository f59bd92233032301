"""The block attention contract every backend implements, and its explicit reference (``MathBackend``).

Layout (B, H, S, D) like HF attention functions:

    forward(q, k, v, *, causal, scale, q_segment_ids=None, k_segment_ids=None) -> (out, lse)
    backward(dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None) -> (dq, dk, dv)

* ``lse`` is the natural-log log-sum-exp of the scaled scores, fp32 (fp64 for fp64 inputs), shape (B, H, Sq),
  and -inf for a row that sees no key (its ``out`` row is 0).
* k/v may have fewer heads than q (GQA: q head h uses kv head ``h // (Hq // Hkv)``, HF's ``repeat_kv`` order);
  dk/dv come back with the kv head count.
* Segment ids (B, S) int: a query only sees keys of the same segment (packed documents).
* ``causal``: key index <= query index inside the block, aligned top-left when Sq != Sk (query 0 sees key 0; the
  Triton kernel's rule). Ring attention only passes square diagonal blocks as causal; the fused ops that align a
  non-square causal block bottom-right (libtorch's CUDA flash op, flash-attn) are not given one.
* ``backward`` receives the *global* ``out``/``lse`` of the row (after ring merging), not the block's own. That
  is what makes per-block gradients sum to the exact full-attention gradient: P = exp(S - lse_global) and the
  row term D = rowsum(dout * out_global).

Kept apart from the backends (``longvila/distributed/block_attention.py``) so that every backend module, the
Triton kernels' tests and the document splitting import the contract downward, and none imports another backend.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .lse import merge_attention, normalise_lse
from .torch_flash_ops import accumulation_dtype


class BlockBackend(Protocol):
    name: str

    def merge(self, out1, lse1, out2, lse2):
        """Combine two partial results over disjoint keys (ring attention's accumulation); ``out1`` may be None."""
        ...

    def forward(self, q, k, v, *, causal: bool, scale: float, q_segment_ids=None, k_segment_ids=None):
        ...

    def backward(self, dout, q, k, v, out, lse, *, causal: bool, scale: float, q_segment_ids=None,
                 k_segment_ids=None):
        ...


def check_block_inputs(q, k, v, causal: bool, q_segment_ids=None, k_segment_ids=None) -> int:
    """Validate shapes against the contract; return the GQA group size Hq // Hkv."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"block attention expects (B, H, S, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    b, hq, sq, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k/v shape {tuple(k.shape)}/{tuple(v.shape)} does not match q {tuple(q.shape)}")
    hkv, sk = k.shape[1], k.shape[2]
    if hq % hkv != 0:
        raise ValueError(f"q heads {hq} are not a multiple of kv heads {hkv}")
    if (q_segment_ids is None) != (k_segment_ids is None):
        raise ValueError("q_segment_ids and k_segment_ids must be given together")
    if q_segment_ids is not None:
        if tuple(q_segment_ids.shape) != (b, sq) or tuple(k_segment_ids.shape) != (b, sk):
            raise ValueError(f"segment ids {tuple(q_segment_ids.shape)}/{tuple(k_segment_ids.shape)} do not match "
                             f"(B, Sq)=({b}, {sq}) / (B, Sk)=({b}, {sk})")
    return hq // hkv


def block_mask(sq: int, sk: int, causal: bool, q_segment_ids=None, k_segment_ids=None, device=None):
    """Boolean (B|1, 1, Sq, Sk) mask of allowed (query, key) pairs, or None when every pair is allowed."""
    mask = None
    if causal:
        mask = torch.ones(sq, sk, dtype=torch.bool, device=device).tril()[None, None]
    if q_segment_ids is not None:
        seg = (q_segment_ids[:, :, None] == k_segment_ids[:, None, :])[:, None]
        mask = seg if mask is None else (mask & seg)
    return mask


def expand_kv(t: torch.Tensor, n_rep: int) -> torch.Tensor:
    """GQA: kv heads repeated ``n_rep`` times in HF's ``repeat_kv`` order (query head h reads kv head h // n_rep)."""
    return t if n_rep == 1 else t.repeat_interleave(n_rep, dim=1)


def reduce_kv(t: torch.Tensor, n_rep: int) -> torch.Tensor:
    """The adjoint of :func:`expand_kv`: gradients of the repeated heads summed back onto each kv head."""
    if n_rep == 1:
        return t
    b, h, s, d = t.shape
    return t.view(b, h // n_rep, n_rep, s, d).sum(dim=2)


class MathBackend:
    """Explicit O(S^2) reference in fp32 (fp64 for fp64 inputs); handles every mask, empty rows included.

    Also the oracle the kernel tests compare against (in fp64): differentiable through autograd, so one
    implementation defines the contract's semantics for every backend.
    """

    name = "math"
    merge = staticmethod(merge_attention)

    def _probs(self, q, k, scale, causal, q_seg, k_seg, lse=None):
        n_rep = check_block_inputs(q, k, k, causal, q_seg, k_seg)
        dtype = accumulation_dtype(q)
        kk = expand_kv(k.to(dtype), n_rep)
        scores = torch.matmul(q.to(dtype), kk.transpose(-1, -2)) * scale
        mask = block_mask(q.shape[2], k.shape[2], causal, q_seg, k_seg, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if lse is None:
            lse = torch.logsumexp(scores, dim=-1)
        else:
            lse = normalise_lse(lse).to(dtype)
        safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
        return torch.exp(scores - safe.unsqueeze(-1)), lse, n_rep, dtype

    def forward(self, q, k, v, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        p, lse, n_rep, dtype = self._probs(q, k, scale, causal, q_segment_ids, k_segment_ids)
        out = torch.matmul(p, expand_kv(v.to(dtype), n_rep))
        return out.to(q.dtype), lse

    def backward(self, dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        p, _, n_rep, dtype = self._probs(q, k, scale, causal, q_segment_ids, k_segment_ids, lse=lse)
        do = dout.to(dtype)
        vv = expand_kv(v.to(dtype), n_rep)
        kk = expand_kv(k.to(dtype), n_rep)
        dv = torch.matmul(p.transpose(-1, -2), do)
        dp = torch.matmul(do, vv.transpose(-1, -2))
        row = (do * out.to(dtype)).sum(dim=-1, keepdim=True)
        ds = p * (dp - row)
        dq = torch.matmul(ds, kk) * scale
        dk = torch.matmul(ds.transpose(-1, -2), q.to(dtype)) * scale
        return dq.to(q.dtype), reduce_kv(dk, n_rep).to(k.dtype), reduce_kv(dv, n_rep).to(v.dtype)
