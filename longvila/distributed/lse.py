"""Log-sum-exp merge of partial attention results (the heart of ring attention's forward).

Two partial results over disjoint key sets, ``(o1, l1)`` and ``(o2, l2)`` with ``oi`` normalised by its own
softmax denominator and ``li`` the natural-log LSE of its scores, combine exactly into attention over the union:

    m = max(l1, l2)   (0 where m is -inf, so that no -inf - -inf = NaN appears)
    wi = exp(li - m),  s = w1 + w2
    lse = m + log s    (-inf when s == 0: the row saw no key at all)
    out = (w1 o1 + w2 o2) / s   (0 when s == 0)

The popular ``sigmoid``/``logsigmoid`` form of this update returns NaN as soon as the accumulator is -inf, which
is the normal state of a packed-document row before its first matching key block arrives, so it is not used.
Everything is computed in fp32 (fp64 inputs stay fp64).
"""

from __future__ import annotations

import torch


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def normalise_lse(lse: torch.Tensor) -> torch.Tensor:
    """Natural-log LSE in fp32 with -inf marking empty rows (FA2 marks them +inf, FA3 -inf; NaN never valid)."""
    lse = lse.to(_acc_dtype(lse))
    return torch.where(lse == float("inf"), torch.full_like(lse, float("-inf")), lse)


def merge_attention(
    out1: torch.Tensor | None,
    lse1: torch.Tensor | None,
    out2: torch.Tensor,
    lse2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results; returns ``(out, lse)`` in fp32 (fp64 if the inputs are fp64).

    ``out*`` are (..., S, D) and ``lse*`` are (..., S). ``out1``/``lse1`` may be ``None`` (empty accumulator),
    in which case the second result is returned normalised. +inf LSE entries are treated as empty rows.
    """
    dtype = _acc_dtype(out2)
    lse2 = normalise_lse(lse2).to(dtype)
    out2 = out2.to(dtype)
    if out1 is None or lse1 is None:
        empty = torch.isneginf(lse2).unsqueeze(-1)
        return out2.masked_fill(empty, 0.0), lse2
    lse1 = normalise_lse(lse1).to(dtype)
    out1 = out1.to(dtype)
    if lse1.shape != lse2.shape or out1.shape != out2.shape:
        raise ValueError(f"merge_attention shape mismatch: {tuple(out1.shape)}/{tuple(lse1.shape)} vs "
                         f"{tuple(out2.shape)}/{tuple(lse2.shape)}")
    m = torch.maximum(lse1, lse2)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w1 = torch.exp(lse1 - m)
    w2 = torch.exp(lse2 - m)
    s = w1 + w2
    nonempty = s > 0
    lse = torch.where(nonempty, m + torch.log(torch.where(nonempty, s, torch.ones_like(s))),
                      torch.full_like(s, float("-inf")))
    inv = torch.where(nonempty, 1.0 / torch.where(nonempty, s, torch.ones_like(s)), torch.zeros_like(s))
    out = (w1 * inv).unsqueeze(-1) * out1 + (w2 * inv).unsqueeze(-1) * out2
    return out, lse


def merge_into(
    acc_out: torch.Tensor | None,
    acc_lse: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    rows: slice | None = None,
    merge=merge_attention,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a block result into an accumulator, optionally only into query rows ``rows`` (sequence dim -2/-1).

    Used by zigzag ring attention, whose off-diagonal steps sometimes cover only the second half of the local
    queries. The accumulator must already exist when ``rows`` is given; it is updated in place (accumulators are
    private fp32 buffers of the ring loop, never autograd leaves). ``merge`` is the block backend's merge (the
    torch one here, the Triton kernel for the triton backend).
    """
    if rows is None:
        return merge(acc_out, acc_lse, out, lse)
    if acc_out is None or acc_lse is None:
        raise ValueError("merge_into with a row slice needs an existing accumulator")
    new_out, new_lse = merge(acc_out[..., rows, :], acc_lse[..., rows], out, lse)
    acc_out[..., rows, :] = new_out
    acc_lse[..., rows] = new_lse
    return acc_out, acc_lse
