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

import functools
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import torch

from .lse import merge_attention, normalise_lse


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


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


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
        dtype = _compute_dtype(q)
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


def _uses_cuda_flash(q: torch.Tensor) -> bool:
    """Whether PyTorch's CUDA flash-attention op (FlashAttention-2 inside libtorch) takes these queries.

    The op needs fp16/bf16, a head dim that is a multiple of 8 up to 256, and an Ampere or newer GPU.
    """
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    d = q.shape[-1]
    return d % 8 == 0 and d <= 256 and torch.cuda.get_device_capability(q.device) >= (8, 0)


def cpu_flash_forward(q, k, v, *, causal: bool, scale: float):
    """``aten._scaled_dot_product_flash_attention_for_cpu``: (out, natural-log LSE (B, H, S)); native GQA."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.contiguous(), k.contiguous(), v.contiguous(), 0.0, causal, attn_mask=None, scale=scale)
    return out, lse.to(_compute_dtype(q)).contiguous()


def cpu_flash_backward(dout, q, k, v, out, lse, *, causal: bool, scale: float):
    """``aten._scaled_dot_product_flash_attention_for_cpu_backward`` against a given (global) out/LSE."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout.to(q.dtype).contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.to(q.dtype).contiguous(),
        lse.to(_compute_dtype(q)).contiguous(), 0.0, causal, attn_mask=None, scale=scale)


def cuda_flash_forward(q, k, v, *, causal: bool, scale: float):
    """``aten._scaled_dot_product_flash_attention``: (out, natural-log fp32 LSE (B, H, S)); native GQA.

    A plain function of the op, so that its argument binding and output shapes can be checked on ``meta`` tensors
    on a machine without CUDA.
    """
    res = torch.ops.aten._scaled_dot_product_flash_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), 0.0, causal, False, scale=scale)
    return res[0], normalise_lse(res[1])


def cuda_flash_backward(dout, q, k, v, out, lse, *, causal: bool, scale: float):
    """``aten._scaled_dot_product_flash_attention_backward`` against a given (global) out/LSE.

    Without dropout the op never reads its random-number state, and without cumulative sequence lengths it runs
    the dense path, so those arguments are placeholders. ``max_q``/``max_k`` are the block lengths.
    """
    seed, offset = _flash_rng_placeholders(q.device)
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
        dout.to(q.dtype).contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.to(q.dtype).contiguous(),
        lse.float().contiguous(), None, None, q.shape[2], k.shape[2], 0.0, causal, seed, offset, scale=scale)
    return dq, dk, dv


@functools.lru_cache(maxsize=None)
def _flash_rng_placeholders(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero tensors shaped like the random-number state the flash forward returns in this torch version.

    Ring attention runs each block's backward without that block's forward outputs. The state's shape and dtype
    changed across torch releases (two int64 scalars, then a (2,) uint64 tensor). The forward's shape function on
    ``meta`` tensors says which one this torch uses. Built once per device (the backward only reads them), so the
    per-block backward does no extra dispatch or allocation.
    """
    probe = torch.empty(1, 1, 1, 8, device="meta", dtype=torch.float16)
    res = torch.ops.aten._scaled_dot_product_flash_attention(probe, probe, probe, 0.0, False, False)
    return tuple(torch.zeros(t.shape, dtype=t.dtype, device=device) for t in res[6:8])


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
        lse = torch.full(q.shape[:3], float("-inf"), dtype=_compute_dtype(q), device=q.device)
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
      into libtorch; O(S) memory, native GQA), see :func:`_uses_cuda_flash`.

    Packed documents run one sub-block each (:class:`DocumentSplitBackend`). fp32 on CUDA (no LSE-returning flash
    op) uses :class:`MathBackend` (O(S^2) memory per block; use ``triton`` on GPU).
    """

    name = "torch"

    def _dense_ops(self, q):
        if q.device.type == "cpu":
            return cpu_flash_forward, cpu_flash_backward
        if _uses_cuda_flash(q):
            return cuda_flash_forward, cuda_flash_backward
        return None


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


class FlashAttnBackend(DocumentSplitBackend):  # the real package needs CUDA; tests drive a CPU stand-in
    """The flash-attn package's internal forward/backward (fp16/bf16 on CUDA, native GQA).

    flash-attn has no segment-id mask, so packed documents run one sub-block each
    (:class:`DocumentSplitBackend`), as in the ``torch`` backend; only ids that are not contiguous runs use the
    math path. Its empty rows are marked with +inf LSE; :func:`normalise_lse` maps them to -inf. Handles the 2.6
    (``window_size`` tuple, 8-tuple return) and 2.7+ (``window_size_left/right``, 4-tuple return) internal
    signatures. Inputs flash-attn does not take (fp32, CPU, head dims it would pad) are refused, not rerouted.
    """

    name = "flash_attn"

    def __init__(self) -> None:
        try:
            from flash_attn import flash_attn_interface as fai
        except ImportError as exc:
            raise RuntimeError(f"block backend 'flash_attn' needs the flash-attn package: {exc}") from exc
        super().__init__()
        self._fai = fai
        self._split_window = "window_size_left" in inspect.signature(fai._flash_attn_forward).parameters

    def _window(self) -> dict[str, Any]:
        return {"window_size_left": -1, "window_size_right": -1} if self._split_window else {"window_size": (-1, -1)}

    device_type = "cuda"  # the package's kernels are CUDA-only; its tests run a CPU stand-in by setting "cpu"

    def _check(self, q) -> None:
        if q.device.type != self.device_type or q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"block backend 'flash_attn' needs fp16/bf16 CUDA tensors, got {q.dtype} on {q.device}")
        d = q.shape[-1]
        if d % 8 != 0 or d > 256:
            # flash-attn would pad such a head dim and hand back padded outputs; refuse rather than mis-slice.
            raise ValueError(f"block backend 'flash_attn' needs a head dim that is a multiple of 8 up to 256, got {d}")

    def _dense_ops(self, q):
        self._check(q)
        return self._dense_forward, self._dense_backward

    def _dense_forward(self, q, k, v, *, causal, scale):
        res = self._fai._flash_attn_forward(
            q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(),
            dropout_p=0.0, softmax_scale=scale, causal=causal, softcap=0.0, alibi_slopes=None,
            return_softmax=False, **self._window())
        out, lse = (res[0], res[1]) if len(res) == 4 else (res[0], res[5])
        return out.transpose(1, 2), normalise_lse(lse)

    def _dense_backward(self, dout, q, k, v, out, lse, *, causal, scale):
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        dq, dk, dv = torch.empty_like(qt), torch.empty_like(kt), torch.empty_like(vt)
        self._fai._flash_attn_backward(
            dout.to(q.dtype).transpose(1, 2).contiguous(), qt, kt, vt, out.to(q.dtype).transpose(1, 2).contiguous(),
            lse.float().contiguous(), dq, dk, dv, dropout_p=0.0, softmax_scale=scale, causal=causal, softcap=0.0,
            alibi_slopes=None, deterministic=False, rng_state=None, **self._window())
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


_FACTORIES: Mapping[str, Callable[[], Any]] = MappingProxyType({
    "math": MathBackend,
    "torch": TorchBackend,
    "triton": TritonBackend,
    "flash_attn": FlashAttnBackend,
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
