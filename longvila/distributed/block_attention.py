"""Local attention block backends: the per-block compute that ring / Ulysses / 2D attention call.

Contract of every block backend, layout (B, H, S, D) like HF attention functions:

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

Backends: ``math`` (explicit reference, any device, fp64-capable), ``torch`` (PyTorch's CPU flash-attention op, or
on CUDA its fp16/bf16 FlashAttention-2 op, both with LSE; math where neither applies), ``triton``
(``longvila.kernels.flash_attention``, imported lazily, segment ids native), ``flash_attn`` (the flash-attn package,
only when it imports). ``torch`` and ``flash_attn`` take no mask: packed documents run one sub-block each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import torch

from .lse import merge_attention, normalise_lse
from .torch_flash_ops import (accumulation_dtype, cpu_flash_backward, cpu_flash_forward, cuda_flash_backward,
                              cuda_flash_forward, flash_rng_placeholders, uses_cuda_flash)


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


def _expand_kv(t: torch.Tensor, n_rep: int) -> torch.Tensor:
    return t if n_rep == 1 else t.repeat_interleave(n_rep, dim=1)


def _reduce_kv(t: torch.Tensor, n_rep: int) -> torch.Tensor:
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
        kk = _expand_kv(k.to(dtype), n_rep)
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
        out = torch.matmul(p, _expand_kv(v.to(dtype), n_rep))
        return out.to(q.dtype), lse

    def backward(self, dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        p, _, n_rep, dtype = self._probs(q, k, scale, causal, q_segment_ids, k_segment_ids, lse=lse)
        do = dout.to(dtype)
        vv = _expand_kv(v.to(dtype), n_rep)
        kk = _expand_kv(k.to(dtype), n_rep)
        dv = torch.matmul(p.transpose(-1, -2), do)
        dp = torch.matmul(do, vv.transpose(-1, -2))
        row = (do * out.to(dtype)).sum(dim=-1, keepdim=True)
        ds = p * (dp - row)
        dq = torch.matmul(ds, kk) * scale
        dk = torch.matmul(ds.transpose(-1, -2), q.to(dtype)) * scale
        return dq.to(q.dtype), _reduce_kv(dk, n_rep).to(k.dtype), _reduce_kv(dv, n_rep).to(v.dtype)


def _runs(ids: torch.Tensor) -> dict[int, tuple[int, int]] | None:
    """``{id: (start, end)}`` of one row's segment ids, or None when some id occurs in two separate runs."""
    values, counts = torch.unique_consecutive(ids, return_counts=True)
    values, ends = values.tolist(), torch.cumsum(counts, 0).tolist()
    if len(set(values)) != len(values):
        return None
    return {v: (e - c, e) for v, e, c in zip(values, ends, counts.tolist())}


def document_pieces(q_segment_ids, k_segment_ids, causal: bool):
    """Split a segment-masked block into mask-free sub-blocks: per batch row, ``(q_start, q_end, k_start, k_end)``
    for every document present among both the queries and the keys.

    Returns None when that split is not exact: a document's ids are not one contiguous run, or (causal) a
    document's query and key ranges differ, where the block's causal diagonal would not be the sub-block's.
    Queries outside every piece see no key (out 0, LSE -inf); keys outside every piece get no gradient.
    """
    pieces = []
    for q_ids, k_ids in zip(q_segment_ids, k_segment_ids):
        q_runs, k_runs = _runs(q_ids), _runs(k_ids)
        if q_runs is None or k_runs is None:
            return None
        row = [(*q_runs[d], *k_runs[d]) for d in q_runs if d in k_runs]
        if causal and any(qs != ks or qe != ke for qs, qe, ks, ke in row):
            return None
        pieces.append(row)
    return pieces


class DocumentSplitBackend:
    """Shared body of the backends whose fused op takes no mask (libtorch's flash ops, the flash-attn package).

    Subclasses supply :meth:`_dense_ops`: the op's mask-free forward and backward for these queries, or None where
    it does not apply. A block without segment ids is one call of the op. A block with segment ids (packed
    documents) is split into one mask-free sub-block per document (:func:`document_pieces`): the cost is the sum
    of the documents' squares and no (Sq, Sk) tensor is built. Reading the ids to find the documents is a device
    sync on CUDA. Ids that are not contiguous runs, causal blocks with Sq != Sk (the fused ops align those
    bottom-right, the contract top-left), and inputs the op does not take, use :class:`MathBackend`.
    """

    name = ""
    merge = staticmethod(merge_attention)

    def __init__(self) -> None:
        self._math = MathBackend()

    def _dense_ops(self, q):
        """(forward, backward) of the fused op for these queries, or None to use the math path."""
        raise NotImplementedError

    def _route(self, q, k, causal: bool, q_segment_ids, k_segment_ids):
        """``(route, pieces)``: route is "flash" (whole block), "documents" (per-document pieces) or "math"."""
        if self._dense_ops(q) is None or (causal and q.shape[2] != k.shape[2]):
            return "math", None
        if q_segment_ids is None:
            return "flash", None
        pieces = document_pieces(q_segment_ids, k_segment_ids, causal)
        return ("math", None) if pieces is None else ("documents", pieces)

    def forward(self, q, k, v, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        route, pieces = self._route(q, k, causal, q_segment_ids, k_segment_ids)
        if route == "math":
            return self._math.forward(q, k, v, causal=causal, scale=scale, q_segment_ids=q_segment_ids,
                                      k_segment_ids=k_segment_ids)
        fwd, _ = self._dense_ops(q)
        if route == "flash":
            return fwd(q, k, v, causal=causal, scale=scale)
        out = torch.zeros_like(q)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=accumulation_dtype(q), device=q.device)
        for b, row in enumerate(pieces):
            for qs, qe, ks, ke in row:
                o, l = fwd(q[b:b + 1, :, qs:qe], k[b:b + 1, :, ks:ke], v[b:b + 1, :, ks:ke], causal=causal,
                           scale=scale)
                out[b:b + 1, :, qs:qe] = o
                lse[b:b + 1, :, qs:qe] = l
        return out, lse

    def backward(self, dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        route, pieces = self._route(q, k, causal, q_segment_ids, k_segment_ids)
        if route == "math":
            return self._math.backward(dout, q, k, v, out, lse, causal=causal, scale=scale,
                                       q_segment_ids=q_segment_ids, k_segment_ids=k_segment_ids)
        _, bwd = self._dense_ops(q)
        if route == "flash":
            return bwd(dout, q, k, v, out, lse, causal=causal, scale=scale)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for b, row in enumerate(pieces):
            for qs, qe, ks, ke in row:
                q_part = (slice(b, b + 1), slice(None), slice(qs, qe))
                k_part = (slice(b, b + 1), slice(None), slice(ks, ke))
                gq, gk, gv = bwd(dout[q_part], q[q_part], k[k_part], v[k_part], out[q_part], lse[q_part],
                                 causal=causal, scale=scale)
                dq[q_part], dk[k_part], dv[k_part] = gq, gk, gv
        return dq, dk, dv


class TorchBackend(DocumentSplitBackend):
    """PyTorch's own flash-attention kernels, which return an LSE, wherever they apply; the math path elsewhere.

    * CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` and its ``_backward`` (natural-log LSE, native GQA,
      exactly SDPA's gradients), any dtype.
    * CUDA, fp16/bf16: ``aten._scaled_dot_product_flash_attention`` and its ``_backward`` (FlashAttention-2 built
      into libtorch; O(S) memory, native GQA), see :func:`~longvila.distributed.torch_flash_ops.uses_cuda_flash`.

    Packed documents run one sub-block each (:class:`DocumentSplitBackend`). fp32 on CUDA (no LSE-returning flash
    op) uses :class:`MathBackend` (O(S^2) memory per block; use ``triton`` on GPU).
    """

    name = "torch"

    def __init__(self) -> None:
        super().__init__()
        self._rng_state: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device, for the backward

    def _dense_ops(self, q):
        if q.device.type == "cpu":
            return cpu_flash_forward, cpu_flash_backward
        if uses_cuda_flash(q):
            return cuda_flash_forward, self._cuda_backward
        return None

    def _cuda_backward(self, dout, q, k, v, out, lse, *, causal, scale):
        if q.device not in self._rng_state:
            self._rng_state[q.device] = flash_rng_placeholders(q.device)
        return cuda_flash_backward(dout, q, k, v, out, lse, causal=causal, scale=scale,
                                   rng_state=self._rng_state[q.device])


class TritonBackend:
    """``longvila.kernels.flash_attention.flash_attn_forward/backward`` and the Triton LSE merge
    (``longvila.kernels.lse_merge``), imported on first use so the distributed code works where Triton is absent.

    The merge kernel accumulates ring steps in place in fp32 (3.4x faster than the torch merge at a
    (1, 28, 32K, 128) H100 shape, benchmarks/RESULTS.md); fp64 inputs (reference tests) keep the torch merge.
    """

    name = "triton"

    def __init__(self) -> None:
        try:
            from longvila.kernels.flash_attention import flash_attn_backward, flash_attn_forward
        except ImportError as exc:  # pragma: no cover - depends on the kernels package
            raise RuntimeError(
                f"block backend 'triton' needs longvila.kernels.flash_attention.flash_attn_forward/backward: {exc}"
            ) from exc
        from longvila.kernels.lse_merge import lse_merge

        self._fwd, self._bwd, self._merge = flash_attn_forward, flash_attn_backward, lse_merge

    def merge(self, out1, lse1, out2, lse2):
        if out1 is None or out2.dtype == torch.float64:
            return merge_attention(out1, lse1, out2, lse2)
        return self._merge(out1, normalise_lse(lse1), out2, normalise_lse(lse2))

    def forward(self, q, k, v, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        out, lse = self._fwd(q, k, v, causal=causal, scale=scale, q_segment_ids=q_segment_ids,
                             k_segment_ids=k_segment_ids)
        return out, normalise_lse(lse)

    def backward(self, dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        return self._bwd(dout, q, k, v, out, lse, causal=causal, scale=scale, q_segment_ids=q_segment_ids,
                         k_segment_ids=k_segment_ids)


def _flash_attn_backend():
    """The flash-attn package's backend, imported only when asked for (the package is optional)."""
    from .flash_attn_backend import FlashAttnBackend

    return FlashAttnBackend()


_FACTORIES: Mapping[str, Callable[[], Any]] = MappingProxyType({
    "math": MathBackend,
    "torch": TorchBackend,
    "triton": TritonBackend,
    "flash_attn": _flash_attn_backend,
})


def available_backends() -> list[str]:
    """Names that :func:`get_block_backend` knows (``triton``/``flash_attn`` may still fail to import)."""
    return sorted(_FACTORIES)


def get_block_backend(backend: str | BlockBackend = "torch") -> BlockBackend:
    """A new backend object for a name; a backend object (anything with callable ``.forward``/``.backward``) is
    returned unchanged.

    Nothing is cached here: the model's :class:`~longvila.distributed.attention.AttentionDispatcher` resolves its
    backend once at construction and passes the object down, so a custom backend is simply an object handed to
    the dispatcher, and no process-wide registry can leak between models or tests.
    """
    if not isinstance(backend, str):
        methods = getattr(backend, "forward", None), getattr(backend, "backward", None)
        if not all(callable(f) for f in methods):
            raise ValueError(f"block backend {backend!r} must have callable .forward and .backward")
        return backend
    if backend not in _FACTORIES:
        raise ValueError(f"unknown attention block backend {backend!r}; expected one of {available_backends()}")
    return _FACTORIES[backend]()


class _BlockAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, q_seg, k_seg, backend):
        out, lse = backend.forward(q, k, v, causal=causal, scale=scale, q_segment_ids=q_seg, k_segment_ids=k_seg)
        ctx.save_for_backward(q, k, v, out, lse, q_seg, k_seg)
        ctx.causal, ctx.scale, ctx.backend = causal, scale, backend
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, q_seg, k_seg = ctx.saved_tensors
        dq, dk, dv = ctx.backend.backward(dout, q, k, v, out, lse, causal=ctx.causal, scale=ctx.scale,
                                          q_segment_ids=q_seg, k_segment_ids=k_seg)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def block_attention(q, k, v, *, causal: bool, scale: float, q_segment_ids=None, k_segment_ids=None,
                    backend: str | Any = "torch", return_lse: bool = False):
    """Differentiable single-process attention through a block backend (the SP=1 path and Ulysses' inner op)."""
    be = get_block_backend(backend)
    out, lse = _BlockAttentionFn.apply(q, k, v, causal, scale, q_segment_ids, k_segment_ids, be)
    return (out, lse) if return_lse else out
