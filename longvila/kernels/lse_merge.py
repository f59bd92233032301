"""Merge two partial attention results by their log-sum-exp: ring attention's accumulation step on the triton
block backend (``longvila/distributed/block_attention.py:TritonBackend.merge``).

Each partial result is ``(out_i, lse_i)`` for the same queries over disjoint key sets; the merged result equals
attention over the union. The merge is done in fp32 with the -inf-safe form of the torch merge it is tested
against (``longvila/distributed/lse.py``):

    m = max(l1, l2), replaced by 0 where it is -inf;   w_i = exp(l_i - m);   s = w1 + w2
    lse = m + log(s)   (-inf where s == 0)            out = (w1 * o1 + w2 * o2) / s   (0 where s == 0)

The popular sigmoid/logsigmoid form returns NaN when an accumulator is still -inf (a query that has seen no key
yet); this form never does. Shapes: ``out_i`` (..., D) in any float dtype, ``lse_i`` (...) matching ``out_i``'s
leading dims (e.g. (B, H, S, D) with (B, H, S)); results are fp32.
"""

from __future__ import annotations

import torch

from ._triton import check_launchable, interpreting, next_power_of_2, tl, triton


@triton.jit
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
    _lse_merge_kernel[(triton.cdiv(rows, block_r),)](o1, l1, o2, l2, out, out_lse, rows, d, BLOCK_R=block_r,
                                                     BLOCK_D=block_d)
    return out, out_lse


def lse_merge(out1, lse1, out2, lse2, *, out=None, out_lse=None):
    """Merge two partials -> ``(out fp32, lse fp32)`` with the Triton kernel (no autograd: ring attention merges
    inside its own autograd function).

    Pass ``out=out1, out_lse=lse1`` (contiguous fp32) to accumulate in place, as ring attention does step by step.
    """
    return _merge_launch(out1, lse1, out2, lse2, out=out, out_lse=out_lse)
