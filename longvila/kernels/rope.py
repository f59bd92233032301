"""Rotary position embedding on q and k in one Triton pass (forward and backward), HF convention.

Convention (Qwen2/Llama ``apply_rotary_pos_emb`` with ``rotate_half``): the head dim is split in halves
``x = [x1, x2]`` and ``out = [x1*cos - x2*sin, x2*cos + x1*sin]`` with ``freq_i = pos * inv_freq_i``,
``inv_freq_i = 1 / theta^(2i/d)``. Positions come from ``position_ids`` (B, S): global positions after sequence
sharding, restarting at 0 for each packed document, so the kernel takes them as given.

Why fused: HF materialises cos/sin (B, S, D) in the activation dtype and several temporaries per layer; here
cos/sin are computed once per step in fp32 (exactly HF's formula: ``pos.float() * inv_freq``, then ``cos``/``sin``
in torch, which range-reduces correctly even at 1M positions, unlike GPU fast-math ``cos``), stored at half width,
and q and k are rotated in one kernel that reads and writes each element once. The rotation itself runs in fp32
with a single rounding to the output dtype (HF rounds cos/sin and each product to bf16; results agree to 1 ulp).
The backward is the inverse rotation (``sin -> -sin``) of the incoming gradients.
"""

from __future__ import annotations

import torch

from ._triton import check_launchable, interpreting, next_power_of_2, tl, triton, triton_usable


def rope_inv_freq(head_dim: int, rope_theta: float, device=None) -> torch.Tensor:
    """HF's default ``inv_freq`` = 1 / theta^(arange(0, d, 2) / d), fp32, shape (d/2,)."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    if rope_theta <= 0:
        raise ValueError(f"rope_theta must be positive, got {rope_theta}")
    return 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))


def rope_cos_sin(position_ids, head_dim, rope_theta=10000.0, *, inv_freq=None, attention_scaling=1.0):
    """fp32 half-width tables ``(cos, sin)`` of shape (B, S, d/2) for ``position_ids`` (B, S).

    ``inv_freq``/``attention_scaling`` override the default schedule, e.g. with a scaled-RoPE model's
    ``model.rotary_emb.inv_freq`` and ``.attention_scaling``.
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be (B, S), got shape {tuple(position_ids.shape)}")
    if inv_freq is None:
        inv_freq = rope_inv_freq(head_dim, rope_theta, device=position_ids.device)
    if inv_freq.numel() * 2 != head_dim:
        raise ValueError(f"inv_freq has {inv_freq.numel()} entries, expected head_dim/2 = {head_dim // 2}")
    freqs = position_ids[..., None].float() * inv_freq.to(device=position_ids.device, dtype=torch.float)
    cos, sin = freqs.cos(), freqs.sin()
    if attention_scaling != 1.0:
        cos, sin = cos * attention_scaling, sin * attention_scaling
    return cos, sin


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_reference(q, k, cos, sin):
    """HF ``apply_rotary_pos_emb`` on (B, H, S, D) q/k with half-width (B, S, D/2) cos/sin; differentiable."""
    c = torch.cat((cos, cos), dim=-1)[:, None].to(q.dtype)
    s = torch.cat((sin, sin), dim=-1)[:, None].to(q.dtype)
    return q * c + _rotate_half(q) * s, k * c.to(k.dtype) + _rotate_half(k) * s.to(k.dtype)


@triton.jit
def _rope_kernel(
    Q, K, QO, KO, COS, SIN,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_qob, stride_qoh, stride_qos, stride_qod,
    stride_kob, stride_koh, stride_kos, stride_kod,
    stride_cb, stride_cs, stride_cd,
    S, HQ, HK, HALF,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // S).to(tl.int64)
    s = (pid % S).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)
    d_ok = d < HALF
    c = tl.load(COS + b * stride_cb + s * stride_cs + d * stride_cd, mask=d_ok, other=0.0).to(tl.float32)
    sn = tl.load(SIN + b * stride_cb + s * stride_cs + d * stride_cd, mask=d_ok, other=0.0).to(tl.float32)
    if BACKWARD:
        sn = -sn

    hq = tl.arange(0, BLOCK_HQ)
    mq = (hq < HQ)[:, None] & d_ok[None, :]
    q_base = Q + b * stride_qb + s * stride_qs + hq[:, None] * stride_qh
    q1 = tl.load(q_base + d[None, :] * stride_qd, mask=mq, other=0.0).to(tl.float32)
    q2 = tl.load(q_base + (d[None, :] + HALF) * stride_qd, mask=mq, other=0.0).to(tl.float32)
    qo_base = QO + b * stride_qob + s * stride_qos + hq[:, None] * stride_qoh
    tl.store(qo_base + d[None, :] * stride_qod, (q1 * c[None, :] - q2 * sn[None, :]).to(QO.dtype.element_ty), mask=mq)
    tl.store(qo_base + (d[None, :] + HALF) * stride_qod, (q2 * c[None, :] + q1 * sn[None, :]).to(QO.dtype.element_ty),
             mask=mq)

    hk = tl.arange(0, BLOCK_HK)
    mk = (hk < HK)[:, None] & d_ok[None, :]
    k_base = K + b * stride_kb + s * stride_ks + hk[:, None] * stride_kh
    k1 = tl.load(k_base + d[None, :] * stride_kd, mask=mk, other=0.0).to(tl.float32)
    k2 = tl.load(k_base + (d[None, :] + HALF) * stride_kd, mask=mk, other=0.0).to(tl.float32)
    ko_base = KO + b * stride_kob + s * stride_kos + hk[:, None] * stride_koh
    tl.store(ko_base + d[None, :] * stride_kod, (k1 * c[None, :] - k2 * sn[None, :]).to(KO.dtype.element_ty), mask=mk)
    tl.store(ko_base + (d[None, :] + HALF) * stride_kod, (k2 * c[None, :] + k1 * sn[None, :]).to(KO.dtype.element_ty),
             mask=mk)


def _check(q, k, cos, sin):
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be (B, H, S, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    b, _, s, d = q.shape
    if k.shape[0] != b or k.shape[2] != s or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, sequence and head dim")
    if d % 2:
        raise ValueError(f"head dim must be even for RoPE, got {d}")
    if cos.shape != sin.shape or cos.dim() != 3 or cos.shape[1] != s or cos.shape[2] != d // 2 \
            or cos.shape[0] not in (1, b):
        raise ValueError(f"cos/sin must be (B or 1, S, D/2) = ({b}, {s}, {d // 2}), got {tuple(cos.shape)}")


def _launch(q, k, cos, sin, backward):
    check_launchable(q, k, cos, sin)
    b, hq, s, d = q.shape
    hk = k.shape[1]
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.numel() == 0 and k.numel() == 0:
        return qo, ko
    half = d // 2
    if sin.stride() != cos.stride():  # the kernel indexes both tables with one set of strides
        cos, sin = cos.contiguous(), sin.contiguous()
    stride_cb = cos.stride(0) if cos.shape[0] == b else 0  # (1, S, D/2) tables broadcast over the batch
    block_hq, block_hk = next_power_of_2(hq), next_power_of_2(hk)
    block_half = max(2, next_power_of_2(half))
    warps = 1 if interpreting() else (4 if block_hq * block_half >= 2048 else 2)
    _rope_kernel[(b * s,)](
        q, k, qo, ko, cos, sin,
        *q.stride(), *k.stride(), *qo.stride(), *ko.stride(),
        stride_cb, cos.stride(1), cos.stride(2),
        s, hq, hk, half,
        BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_HALF=block_half, BACKWARD=backward, num_warps=warps,
    )
    return qo, ko


class RopeFunction(torch.autograd.Function):
    """``RopeFunction.apply(q, k, cos, sin) -> (q_rot, k_rot)`` with half-width fp32 cos/sin (no grad to them)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        _check(q, k, cos, sin)
        ctx.save_for_backward(cos, sin)
        ctx.q_shape_dtype = (q.shape, q.dtype)
        ctx.k_shape_dtype = (k.shape, k.dtype)
        return _launch(q, k, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        # Gradients may be None if only one output is used downstream.
        if dq is None:
            dq = torch.zeros(ctx.q_shape_dtype[0], dtype=ctx.q_shape_dtype[1], device=cos.device)
        if dk is None:
            dk = torch.zeros(ctx.k_shape_dtype[0], dtype=ctx.k_shape_dtype[1], device=cos.device)
        gq, gk = _launch(dq, dk, cos, sin, backward=True)
        return gq, gk, None, None


def apply_rope_cos_sin(q, k, cos, sin):
    """Rotate (B, H, S, D) q and k with half-width (B or 1, S, D/2) cos/sin tables (Triton; differentiable)."""
    return RopeFunction.apply(q, k, cos, sin)


def apply_rope(q, k, position_ids, rope_theta=10000.0, *, inv_freq=None, attention_scaling=1.0):
    """Fused RoPE from positions: q (B, Hq, S, D), k (B, Hk, S, D), position_ids (B, S) -> (q_rot, k_rot).

    Uses the Triton kernel where it can run, else HF's formula (same numbers up to rounding).
    """
    cos, sin = rope_cos_sin(position_ids, q.shape[-1], rope_theta, inv_freq=inv_freq,
                            attention_scaling=attention_scaling)
    if triton_usable(q, k):
        return apply_rope_cos_sin(q, k, cos, sin)
    return apply_rope_reference(q, k, cos, sin)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Drop-in for HF's ``apply_rotary_pos_emb`` taking HF's full-width (B, S, D) cos/sin.

    ``unsqueeze_dim=1`` means q/k are (B, H, S, D); ``2`` means (B, S, H, D). Falls back to HF's formula where
    Triton cannot run.
    """
    if unsqueeze_dim not in (1, 2):
        raise ValueError(f"unsqueeze_dim must be 1 or 2, got {unsqueeze_dim}")
    half = cos.shape[-1] // 2
    if not triton_usable(q, k):
        c, s = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
    if unsqueeze_dim == 2:
        qo, ko = apply_rope_cos_sin(q.transpose(1, 2), k.transpose(1, 2), cos[..., :half], sin[..., :half])
        return qo.transpose(1, 2), ko.transpose(1, 2)
    return apply_rope_cos_sin(q, k, cos[..., :half], sin[..., :half])
