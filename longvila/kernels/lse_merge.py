"""Merge two partial attention results by their log-sum-exp (ring attention's accumulation step).

Each partial result is ``(out_i, lse_i)`` for the same queries over disjoint key sets; the merged result equals
attention over the union. The merge is done in fp32 with the -inf-safe form from DESIGN.md:

    m = max(l1, l2), replaced by 0 where it is -inf;   w_i = exp(l_i - m);   s = w1 + w2
    lse = m + log(s)   (-inf where s == 0)            out = (w1 * o1 + w2 * o2) / s   (0 where s == 0)

The popular sigmoid/logsigmoid form returns NaN when an accumulator is still -inf (a query that has seen no key
yet); this form never does. Shapes: ``out_i`` (..., D) in any float dtype, ``lse_i`` (...) matching ``out_i``'s
leading dims (e.g. (B, H, S, D) with (B, H, S)); results are fp32.
"""

from __future__ import annotations

import torch

from ._triton import LazyKernels, check_launchable, interpreting, next_power_of_2, tl, triton


def lse_merge_reference(out1, lse1, out2, lse2):
    """Pure-torch merge (differentiable); returns ``(out, lse)`` in fp32 (float64 for float64 inputs)."""
    dt = torch.promote_types(torch.promote_types(out1.dtype, lse1.dtype), torch.float32)
    o1, o2 = out1.to(dt), out2.to(dt)
    l1, l2 = lse1.to(dt), lse2.to(dt)
    m = torch.maximum(l1, l2)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w1 = torch.exp(l1 - m)
    w2 = torch.exp(l2 - m)
    s = w1 + w2
    empty = s == 0
    s_safe = torch.where(empty, torch.ones_like(s), s)
    lse = torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(s_safe))
    out = (w1[..., None] * o1 + w2[..., None] * o2) / s_safe[..., None]
    return out, lse


def _lse_merge_kernel(
    O1, L1, O2, L2, OUT, LOUT,
    R, D,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    r_ok = rows < R
    l1 = tl.load(L1 + rows, mask=r_ok, other=float("-inf")).to(tl.float32)
    l2 = tl.load(L2 + rows, mask=r_ok, other=float("-inf")).to(tl.float32)
    m = tl.maximum(l1, l2)
    m = tl.where(m == float("-inf"), 0.0, m)
    w1 = tl.exp(l1 - m)
    w2 = tl.exp(l2 - m)
    s = w1 + w2
    empty = s == 0.0
    s_safe = tl.where(empty, 1.0, s)
    lse = tl.where(empty, float("-inf"), m + tl.log(s_safe))
    a1 = w1 / s_safe
    a2 = w2 / s_safe
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    mask = r_ok[:, None] & (cols[None, :] < D)
    o1 = tl.load(O1 + offs, mask=mask, other=0.0).to(tl.float32)
    o2 = tl.load(O2 + offs, mask=mask, other=0.0).to(tl.float32)
    out = a1[:, None] * o1 + a2[:, None] * o2
    # Each program reads its rows before writing them, so OUT/LOUT may alias O1/L1 (in-place accumulation).
    tl.store(OUT + offs, out, mask=mask)
    tl.store(LOUT + rows, lse, mask=r_ok)


_KERNELS = LazyKernels(globals(), kernels=[_lse_merge_kernel])


def _check(out1, lse1, out2, lse2):
    if out1.shape != out2.shape or lse1.shape != lse2.shape:
        raise ValueError(f"partial shapes differ: out {tuple(out1.shape)} vs {tuple(out2.shape)}, "
                         f"lse {tuple(lse1.shape)} vs {tuple(lse2.shape)}")
    if out1.dim() < 1 or tuple(out1.shape[:-1]) != tuple(lse1.shape):
        raise ValueError(f"lse shape {tuple(lse1.shape)} must equal out's leading dims {tuple(out1.shape[:-1])}")


def _merge_launch(out1, lse1, out2, lse2, out=None, out_lse=None):
    _check(out1, lse1, out2, lse2)
    check_launchable(out1, lse1, out2, lse2)
    d = out1.shape[-1]
    o1 = out1.reshape(-1, d).contiguous()
    o2 = out2.reshape(-1, d).contiguous()
    l1 = lse1.reshape(-1).contiguous()
    l2 = lse2.reshape(-1).contiguous()
    rows = l1.numel()
    if out is None:
        out = torch.empty(out1.shape, dtype=torch.float32, device=out1.device)
    if out_lse is None:
        out_lse = torch.empty(lse1.shape, dtype=torch.float32, device=out1.device)
    for name, t, shape in (("out", out, out1.shape), ("out_lse", out_lse, lse1.shape)):
        if t.dtype != torch.float32 or t.shape != shape or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous fp32 tensor of shape {tuple(shape)}")
    if rows == 0:
        return out, out_lse
    block_d = max(16, next_power_of_2(d))
    block_r = max(1, min(64, 4096 // block_d)) if not interpreting() else 8
    kernel, _ = _KERNELS.get("_lse_merge_kernel")
    kernel[(triton.cdiv(rows, block_r),)](o1, l1, o2, l2, out, out_lse, rows, d, BLOCK_R=block_r, BLOCK_D=block_d)
    return out, out_lse


class LseMergeFunction(torch.autograd.Function):
    """Differentiable merge; the backward uses the normalised weights ``a_i = exp(lse_i - lse)``:
    ``d o_i = a_i * dout`` and ``d lse_i = a_i * (sum(dout * (o_i - out)) + dlse)``."""

    @staticmethod
    def forward(ctx, out1, lse1, out2, lse2):
        out, lse = _merge_launch(out1, lse1, out2, lse2)
        ctx.save_for_backward(out1, lse1, out2, lse2, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        out1, lse1, out2, lse2, out, lse = ctx.saved_tensors
        empty = torch.isneginf(lse)
        safe = torch.where(empty, torch.zeros_like(lse), lse)
        grads = []
        for o_i, l_i in ((out1, lse1), (out2, lse2)):
            a = torch.where(empty, torch.zeros_like(lse), torch.exp(l_i.float() - safe))
            d_o = a[..., None] * (dout.float() if dout is not None else torch.zeros_like(out))
            d_l = torch.zeros_like(lse)
            if dout is not None:
                d_l = d_l + (dout.float() * (o_i.float() - out)).sum(-1)
            if dlse is not None:
                d_l = d_l + dlse.float()
            grads += [d_o.to(o_i.dtype), (a * d_l).to(l_i.dtype)]
        return tuple(grads)


def lse_merge(out1, lse1, out2, lse2, *, out=None, out_lse=None):
    """Merge two partials -> ``(out fp32, lse fp32)`` with the Triton kernel.

    Pass ``out=out1, out_lse=lse1`` (contiguous fp32) to accumulate in place, as ring attention does step by step.
    Differentiable (through :class:`LseMergeFunction`) when no output buffers are given.
    """
    if out is None and out_lse is None and torch.is_grad_enabled() and any(
        t.requires_grad for t in (out1, lse1, out2, lse2)
    ):
        return LseMergeFunction.apply(out1, lse1, out2, lse2)
    return _merge_launch(out1, lse1, out2, lse2, out=out, out_lse=out_lse)
