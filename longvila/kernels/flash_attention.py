"""Flash attention in Triton: forward and backward that return / consume a natural-log fp32 LSE.

Why this kernel: ring and Ulysses attention need a block backend whose forward returns the log-sum-exp and whose
backward runs against an *externally supplied* (global) ``out``/``lse``; it also serves as the model's attention on
GPU, with packed documents expressed as segment ids (no O(S^2) mask is ever built).

Layout ``(B, H, S, D)`` (HF's attention-function layout; any strides). Contract (the block-backend contract of
``longvila/distributed/block_attention.py``, whose ``MathBackend`` is the reference these kernels are tested
against)::

    flash_attn_forward(q, k, v, *, causal, scale, q_segment_ids=None, k_segment_ids=None) -> (out, lse)
    flash_attn_backward(dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None)
        -> (dq, dk, dv)

Semantics:
- ``causal``: key index ``j`` is visible to query index ``i`` iff ``j <= i``. When ``Sq != Sk`` the mask is aligned
  **top-left** (query 0 sees key 0), as the block-backend contract says; ring attention only passes square
  diagonal blocks as causal.
- GQA: ``k``/``v`` may have fewer heads (``Hq % Hkv == 0``); query head ``h`` reads kv head ``h // (Hq // Hkv)``
  straight from memory (kv is never repeated); dk/dv come back with ``Hkv`` heads.
- Segment ids ``(B, Sq)`` / ``(B, Sk)`` int: a query sees only keys with an equal id. When ids are non-decreasing
  (packed documents, zigzag shards, padding as one extra document) each program only visits the key (query) blocks
  its documents span, so packed documents cost roughly the sum of their own squares; any other ids stay correct
  and just skip nothing.
- Rows with no visible key get ``out = 0`` and ``lse = -inf``; their gradients are 0.
- Head dims up to 256; non-powers of two (80, 96) are padded to the next power of two with masked loads, and dims
  below 16 are padded to 16 (``tl.dot`` needs K >= 16).
- fp16 / bf16 / fp32 inputs; all softmax statistics and every accumulator (out, dq, dk, dv) are fp32. The backward
  has no atomics: one pass over key blocks produces dk/dv (looping over the GQA group inside the program) and a
  separate pass over query blocks produces dq, so results are bit-reproducible run to run (FA2-style).
"""

from __future__ import annotations

import math

import torch

from ._triton import (
    HAS_TRITON,
    autotune_enabled,
    autotuned,
    check_launchable,
    interpreting,
    next_power_of_2,
    tl,
    triton,
)

LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------------------------------------------
# Triton kernels: module-level @triton.jit functions, compiled or interpreted as the process's TRITON_INTERPRET says
# when this module is imported (longvila/kernels/_triton.py); the forward and both backward passes also get a GPU
# autotuner (`_*_tuned` below).
#
# Segments: instead of testing every key block inside the loop (an scf.if around the loads stops Triton's
# software pipelining and costs registers), the launcher computes per-row visible ranges on the device
# (``_segment_ranges``: for each query row the span of keys with the same id, exact when ids are non-decreasing,
# which packed documents, zigzag shards and padding-as-an-extra-document all are; the whole row otherwise). Each
# program narrows its loop bounds to the union of its rows' spans and applies the exact id mask elementwise.
# --------------------------------------------------------------------------------------------------------------
@triton.jit
def _tile_mask(offs_rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """In-bounds elements of a (rows, BLOCK_D) tile: rows below ``n_rows`` and, when the head dim is padded to a
    power of two, columns below HEAD_DIM."""
    if BLOCK_D == HEAD_DIM:
        mask = (offs_rows < n_rows)[:, None]
    else:
        mask = (offs_rows < n_rows)[:, None] & (offs_d[None, :] < HEAD_DIM)
    return mask


@triton.jit
def _load_tile(ptrs, offs_rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               ROW_MASK: tl.constexpr, UPCAST: tl.constexpr):
    """Load a (rows, BLOCK_D) tile of q/k/v/do. Rows at or past ``n_rows`` (only checked when ROW_MASK) and the
    padded head dims past HEAD_DIM read as 0; no mask at all on full interior tiles, so those loads vectorise."""
    if ROW_MASK:
        x = tl.load(ptrs, mask=_tile_mask(offs_rows, n_rows, offs_d, HEAD_DIM, BLOCK_D), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _key_block_scores(
    q, offs_m, q_seg, k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_segk,
    start_n, Sk, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Load key block [start_n, start_n + BLOCK_N) and score the query block against it (query-major, as the
    forward and the dq pass both need). Returns ``(qk, k, v)``; qk is in log2 units and -inf where a key is past
    Sk, in the causal future (MASKED) or in another document (HAS_SEG)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    rows = offs_n.to(tl.int64)
    k = _load_tile(k_base + rows[:, None] * stride_ks + offs_d[None, :] * stride_kd, offs_n, Sk, offs_d,
                   HEAD_DIM, BLOCK_D, MASKED, UPCAST)
    v = _load_tile(v_base + rows[:, None] * stride_vs + offs_d[None, :] * stride_vd, offs_n, Sk, offs_d,
                   HEAD_DIM, BLOCK_D, MASKED, UPCAST)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED or HAS_SEG:
        if MASKED:
            keep = (offs_n < Sk)[None, :]
            if IS_CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            if HAS_SEG:
                k_seg = tl.load(kseg_base + rows * stride_segk, mask=offs_n < Sk, other=0)
                keep = keep & (k_seg[None, :] == q_seg[:, None])
        else:
            k_seg = tl.load(kseg_base + rows * stride_segk)
            keep = k_seg[None, :] == q_seg[:, None]
        qk = tl.where(keep, qk, float("-inf"))
    return qk, k, v


@triton.jit
def _query_block_key_ranges(
    start_m, offs_m, m_ok, rows, b, Sq, Sk, QSEG, KSEG, KR_LO, KR_HI, stride_qsegb, stride_qsegs, stride_ksegb,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr,
):
    """Key ranges a query block visits, shared by the forward and the dq pass: ``[lo, end1)`` needs no mask (fully
    in range and causally visible), ``[start2, hi)`` is the masked diagonal band / tail. With segments both are
    narrowed to the union of the rows' document spans. Also returns the rows' segment ids and the key-segment
    base pointer (dummies without segments)."""
    sk_full = (Sk // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M, Sk)
        full_hi = tl.minimum(((start_m + 1) // BLOCK_N) * BLOCK_N, sk_full)
    else:
        hi = Sk
        full_hi = sk_full
    lo = 0
    end1 = full_hi
    start2 = full_hi
    q_seg = offs_m
    kseg_base = KSEG
    if HAS_SEG:
        q_seg = tl.load(QSEG + b * stride_qsegb + rows * stride_qsegs, mask=m_ok, other=0)
        kseg_base = KSEG + b * stride_ksegb
        span_lo = tl.load(KR_LO + b * Sq + offs_m, mask=m_ok, other=2147483647)
        span_hi = tl.load(KR_HI + b * Sq + offs_m, mask=m_ok, other=0)
        k_lo = tl.min(span_lo, 0)
        k_hi = tl.max(span_hi, 0)
        lo = (k_lo // BLOCK_N) * BLOCK_N
        end1 = tl.minimum(full_hi, ((k_hi + BLOCK_N - 1) // BLOCK_N) * BLOCK_N)
        start2 = tl.maximum(full_hi, lo)
        hi = tl.minimum(hi, k_hi)
    return lo, end1, start2, hi, q_seg, kseg_base


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, offs_m, q_seg,
    k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_segk,
    lo, hi, Sk, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online-softmax update over key blocks [lo, hi). MASKED adds the causal and key-bounds masks."""
    for start_n in range(lo, hi, BLOCK_N):
        qk, k, v = _key_block_scores(
            q, offs_m, q_seg, k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_segk,
            start_n, Sk, qk_scale,
            HEAD_DIM, BLOCK_D, BLOCK_N, MASKED, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
        )
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED or HAS_SEG:
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked so far: avoid -inf - -inf
        else:
            m_use = m_new
        p = tl.exp2(qk - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, QSEG, KSEG, KR_LO, KR_HI,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_qsegb, stride_qsegs, stride_ksegb, stride_ksegs,
    H, GROUP, Sq, Sk, qk_scale, SEQ_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Sq
    rows = offs_m.to(tl.int64)

    q = _load_tile(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                   offs_m, Sq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)

    # Stage 1: key blocks fully in range and fully visible under the causal mask (no mask work).
    # Stage 2: the diagonal band and the tail block, with the causal and bounds masks.
    lo, end1, start2, hi, q_seg, kseg_base = _query_block_key_ranges(
        start_m, offs_m, m_ok, rows, b, Sq, Sk, QSEG, KSEG, KR_LO, KR_HI, stride_qsegb, stride_qsegs, stride_ksegb,
        BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_SEG,
    )

    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, offs_m, q_seg,
        k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_ksegs,
        lo, end1, Sk, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, False, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
    )
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, offs_m, q_seg,
        k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_ksegs,
        start2, hi, Sk, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, True, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
    )

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=_tile_mask(offs_m, Sq, offs_d, HEAD_DIM, BLOCK_D))
    tl.store(LSE + pid_bh.to(tl.int64) * Sq + offs_m, lse, mask=m_ok)


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_dob, stride_doh, stride_dos, stride_dod,
    H, Sq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dout * out) in fp32 (the softmax-backward correction term)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < Sq) & (offs_d[None, :] < HEAD_DIM)
    rows = offs_m.to(tl.int64)[:, None]
    o = tl.load(O + b * stride_ob + h * stride_oh + rows * stride_os + offs_d[None, :] * stride_od, mask=mask,
                other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows * stride_dos + offs_d[None, :] * stride_dod, mask=mask,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * Sq + offs_m, delta, mask=offs_m < Sq)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, offs_n, k_seg,
    q_base, do_base, lse_base, delta_base, qseg_base,
    stride_qs, stride_qd, stride_dos, stride_dod, stride_segq,
    lo, hi, Sq, Sk, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Accumulate dk/dv of one key block over query blocks [lo, hi), in the transposed (key-major) form.

    Query rows past Sq load as zeros with lse2 = +inf, so p = 0 there without a tile mask; rows whose lse is
    -inf (they see no key anywhere) are treated the same way.
    """
    offs_d = tl.arange(0, BLOCK_D)
    arange_m = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + arange_m
        m_ok = offs_m < Sq
        rows = offs_m.to(tl.int64)
        q_ptrs = q_base + rows[:, None] * stride_qs + offs_d[None, :] * stride_qd
        do_ptrs = do_base + rows[:, None] * stride_dos + offs_d[None, :] * stride_dod
        q = _load_tile(q_ptrs, offs_m, Sq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)
        do = _load_tile(do_ptrs, offs_m, Sq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)
        lse2 = tl.load(lse_base + offs_m, mask=m_ok, other=float("inf")) * 1.4426950408889634
        lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        if MASKED or HAS_SEG:
            if MASKED and IS_CAUSAL:
                keep = offs_n[:, None] <= offs_m[None, :]
                if HAS_SEG:
                    q_seg = tl.load(qseg_base + rows * stride_segq, mask=m_ok, other=0)
                    keep = keep & (k_seg[:, None] == q_seg[None, :])
            else:
                q_seg = tl.load(qseg_base + rows * stride_segq, mask=m_ok, other=0)
                keep = k_seg[:, None] == q_seg[None, :]
            qkT = tl.where(keep, qkT, float("-inf"))
        pT = tl.exp2(qkT - lse2[None, :])
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, QSEG, KSEG, QR_LO, QR_HI,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dos, stride_dod,
    stride_dkb, stride_dkh, stride_dks, stride_dkd,
    stride_dvb, stride_dvh, stride_dvs, stride_dvd,
    stride_qsegb, stride_qsegs, stride_ksegb, stride_ksegs,
    H, HKV, GROUP, Sq, Sk, qk_scale, sm_scale, SEQ_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hk = (pid_bh % HKV).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Sk
    rows = offs_n.to(tl.int64)
    k = _load_tile(K + b * stride_kb + hk * stride_kh + rows[:, None] * stride_ks + offs_d[None, :] * stride_kd,
                   offs_n, Sk, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)
    v = _load_tile(V + b * stride_vb + hk * stride_vh + rows[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                   offs_n, Sk, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)

    # Query blocks: causal -> the diagonal band [lo, m_full) is masked, [m_full, Sq) is fully visible.
    if IS_CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
        m_full = tl.maximum(tl.minimum(((start_n + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, Sq), lo)
    else:
        lo = 0
        m_full = 0
    hi = Sq
    end1 = m_full
    start2 = m_full
    k_seg = offs_n
    qseg_base = QSEG
    if HAS_SEG:
        k_seg = tl.load(KSEG + b * stride_ksegb + rows * stride_ksegs, mask=n_ok, other=-1)
        qseg_base = QSEG + b * stride_qsegb
        span_lo = tl.load(QR_LO + b * Sk + offs_n, mask=n_ok, other=2147483647)
        span_hi = tl.load(QR_HI + b * Sk + offs_n, mask=n_ok, other=0)
        q_lo = tl.min(span_lo, 0)
        q_hi = tl.max(span_hi, 0)
        lo = tl.maximum(lo, (q_lo // BLOCK_M) * BLOCK_M)
        end1 = tl.minimum(m_full, q_hi)
        start2 = tl.maximum(m_full, lo)
        hi = tl.minimum(hi, q_hi)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * H + h
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = LSE + bh * Sq
        delta_base = DELTA + bh * Sq
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, offs_n, k_seg,
            q_base, do_base, lse_base, delta_base, qseg_base,
            stride_qs, stride_qd, stride_dos, stride_dod, stride_qsegs,
            lo, end1, Sq, Sk, qk_scale,
            HEAD_DIM, BLOCK_D, BLOCK_M, True, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
        )
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, offs_n, k_seg,
            q_base, do_base, lse_base, delta_base, qseg_base,
            stride_qs, stride_qd, stride_dos, stride_dod, stride_qsegs,
            start2, hi, Sq, Sk, qk_scale,
            HEAD_DIM, BLOCK_D, BLOCK_M, False, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
        )
    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + hk * stride_dkh + rows[:, None] * stride_dks + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=_tile_mask(offs_n, Sk, offs_d, HEAD_DIM, BLOCK_D))
    tl.store(DV + b * stride_dvb + hk * stride_dvh + rows[:, None] * stride_dvs + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=_tile_mask(offs_n, Sk, offs_d, HEAD_DIM, BLOCK_D))


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse2, delta, offs_m, q_seg,
    k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_segk,
    lo, hi, Sk, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Accumulate dq of one query block over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        qk, k, v = _key_block_scores(
            q, offs_m, q_seg, k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_segk,
            start_n, Sk, qk_scale,
            HEAD_DIM, BLOCK_D, BLOCK_N, MASKED, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
        )
        p = tl.exp2(qk - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, QSEG, KSEG, KR_LO, KR_HI,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dos, stride_dod,
    stride_dqb, stride_dqh, stride_dqs, stride_dqd,
    stride_qsegb, stride_qsegs, stride_ksegb, stride_ksegs,
    H, GROUP, Sq, Sk, qk_scale, sm_scale, SEQ_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Sq
    rows = offs_m.to(tl.int64)
    q = _load_tile(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                   offs_m, Sq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)
    do = _load_tile(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + offs_d[None, :] * stride_dod,
                    offs_m, Sq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)
    lse2 = tl.load(LSE + pid_bh.to(tl.int64) * Sq + offs_m, mask=m_ok, other=float("inf")) * 1.4426950408889634
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * Sq + offs_m, mask=m_ok, other=0.0)

    lo, end1, start2, hi, q_seg, kseg_base = _query_block_key_ranges(
        start_m, offs_m, m_ok, rows, b, Sq, Sk, QSEG, KSEG, KR_LO, KR_HI, stride_qsegb, stride_qsegs, stride_ksegb,
        BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_SEG,
    )

    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _bwd_dq_inner(
        dq, q, do, lse2, delta, offs_m, q_seg,
        k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_ksegs,
        lo, end1, Sk, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, False, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
    )
    dq = _bwd_dq_inner(
        dq, q, do, lse2, delta, offs_m, q_seg,
        k_base, v_base, kseg_base, stride_ks, stride_kd, stride_vs, stride_vd, stride_ksegs,
        start2, hi, Sk, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, True, IS_CAUSAL, HAS_SEG, UPCAST, DOT_PRECISION,
    )
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqs + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=_tile_mask(offs_m, Sq, offs_d, HEAD_DIM, BLOCK_D))


def _gpu_configs(pairs):
    """Autotune candidates ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``; the first is the no-autotune default."""
    if not HAS_TRITON:
        return []
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


# H100 candidates ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``. First picked by compiling for sm_90 without a GPU
# (wgmma, fits shared memory, no spills), then re-ranked by `benchmarks/tune_flash_attention.py` on an H100
# (bf16, d=128, causal, 16 heads x 16K; see benchmarks/RESULTS.md): the measured best of each kernel is listed.
# The first entry is the default when autotuning is off (LONGVILA_TRITON_AUTOTUNE=0), so it is a config that also
# fits GPUs with less shared memory; configs that exceed shared memory (fp32, d=256, smaller GPUs) are dropped by
# the autotuner, and the default falls back to _SAFE_CONFIG there.
_FWD_CONFIGS = [(128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 2), (64, 32, 4, 4)]
_DKDV_CONFIGS = [(64, 64, 4, 2), (64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 3), (32, 64, 4, 3), (16, 64, 8, 3)]
_DQ_CONFIGS = [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 4, 3), (64, 16, 4, 3)]
_SAFE_CONFIG = (64, 32, 4, 2)
_TUNE_KEY = ["HEAD_DIM", "SEQ_BUCKET", "IS_CAUSAL", "HAS_SEG"]
_INTERPRET_BLOCK = {"BLOCK_M": 16, "BLOCK_N": 16}

# The autotuned launchers of the three tuned kernels (compiled mode only; None under the interpreter).
_attn_fwd_kernel_tuned = autotuned(_attn_fwd_kernel, _gpu_configs(_FWD_CONFIGS), _TUNE_KEY)
_attn_bwd_dkdv_kernel_tuned = autotuned(_attn_bwd_dkdv_kernel, _gpu_configs(_DKDV_CONFIGS), _TUNE_KEY)
_attn_bwd_dq_kernel_tuned = autotuned(_attn_bwd_dq_kernel, _gpu_configs(_DQ_CONFIGS), _TUNE_KEY)


def _launch(kernel, tuned, grid_fn, args, constexprs, default_pairs, elem_size, config=None):
    """Launch a tuned kernel: through its autotuner (``tuned``) on the GPU unless autotuning is off or ``config``
    is given; otherwise the jitted ``kernel`` with ``config`` / the interpreter blocks / the default config."""
    if config is None and tuned is not None and autotune_enabled():
        tuned[grid_fn](*args, **constexprs)
        return
    if config is None:
        if interpreting():
            config = dict(_INTERPRET_BLOCK)
        else:
            big = elem_size * constexprs["BLOCK_D"] > 256  # fp32 with d > 64, or 16-bit with d > 128
            m, n, w, s = _SAFE_CONFIG if big else default_pairs[0]
            config = {"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
    meta = {**constexprs, **config}
    kernel[grid_fn(meta)](*args, **meta)


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, q_segment_ids, k_segment_ids):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, H, S, D), got shape {tuple(t.shape)}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"{name} dtype must be fp16/bf16/fp32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q/k/v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if q.shape[3] > _MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[3]} exceeds the supported maximum {_MAX_HEAD_DIM}")
    if (q_segment_ids is None) != (k_segment_ids is None):
        raise ValueError("q_segment_ids and k_segment_ids must be given together")
    if q_segment_ids is not None:
        if tuple(q_segment_ids.shape) != (q.shape[0], q.shape[2]):
            raise ValueError(f"q_segment_ids shape {tuple(q_segment_ids.shape)} != (B, Sq) {(q.shape[0], q.shape[2])}")
        if tuple(k_segment_ids.shape) != (k.shape[0], k.shape[2]):
            raise ValueError(f"k_segment_ids shape {tuple(k_segment_ids.shape)} != (B, Sk) {(k.shape[0], k.shape[2])}")
        if q_segment_ids.dtype.is_floating_point or k_segment_ids.dtype.is_floating_point:
            raise ValueError(f"segment ids must be integers, got {q_segment_ids.dtype} / {k_segment_ids.dtype}")


def _segment_ranges(seg_a: torch.Tensor, seg_b: torch.Tensor):
    """For every row of ``seg_a`` the half-open span of ``seg_b`` positions holding the same id, as int32 (B, S_a).

    Exact when each row of ``seg_b`` is non-decreasing (checked on the device, no host sync); the full span
    otherwise, so the kernels stay correct for arbitrary ids and merely skip less work.
    """
    n = seg_b.shape[1]
    lo = torch.searchsorted(seg_b, seg_a, right=False, out_int32=True)
    hi = torch.searchsorted(seg_b, seg_a, right=True, out_int32=True)
    if n > 1:
        ordered = (seg_b[:, 1:] >= seg_b[:, :-1]).all(dim=1, keepdim=True)
        lo = torch.where(ordered, lo, torch.zeros_like(lo))
        hi = torch.where(ordered, hi, torch.full_like(hi, n))
    return lo.contiguous(), hi.contiguous()


def _seg_args(q, q_segment_ids, k_segment_ids, need_k_ranges=True, need_q_ranges=False):
    """Segment ids as int32 with their strides and visible-span tables; dummies when absent (never read)."""
    if q_segment_ids is None:
        dummy = torch.empty(1, dtype=torch.int32, device=q.device)
        return dummy, dummy, (0, 0, 0, 0), (dummy, dummy), (dummy, dummy), False
    qs = q_segment_ids.to(device=q.device, dtype=torch.int32).contiguous()
    ks = k_segment_ids.to(device=q.device, dtype=torch.int32).contiguous()
    k_ranges = _segment_ranges(qs, ks) if need_k_ranges else None
    q_ranges = _segment_ranges(ks, qs) if need_q_ranges else None
    return qs, ks, (qs.stride(0), qs.stride(1), ks.stride(0), ks.stride(1)), k_ranges, q_ranges, True


def _common_constexprs(q, causal, has_seg):
    d = q.shape[3]
    return {
        "HEAD_DIM": d,
        "BLOCK_D": max(16, next_power_of_2(d)),
        "IS_CAUSAL": bool(causal),
        "HAS_SEG": has_seg,
        "UPCAST": interpreting(),
        "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }


def _seq_bucket(sq, sk):
    return min(next_power_of_2(max(sq, sk)), 1 << 16)


def _forward(q, k, v, causal, scale, q_segment_ids=None, k_segment_ids=None, config=None):
    _check_inputs(q, k, v, q_segment_ids, k_segment_ids)
    check_launchable(q, k, v)
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    out = torch.empty((b, hq, sq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or sk == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    qs, ks, seg_strides, k_ranges, _, has_seg = _seg_args(q, q_segment_ids, k_segment_ids)
    args = (
        q, k, v, out, lse, qs, ks, *k_ranges,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *seg_strides,
        hq, hq // hkv, sq, sk, float(scale) * LOG2E, _seq_bucket(sq, sk),
    )
    _launch(
        _attn_fwd_kernel,
        _attn_fwd_kernel_tuned,
        lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), b * hq),
        args,
        _common_constexprs(q, causal, has_seg),
        _FWD_CONFIGS,
        q.element_size(),
        config,
    )
    return out, lse


def _backward(dout, q, k, v, out, lse, causal, scale, q_segment_ids=None, k_segment_ids=None,
              dkdv_config=None, dq_config=None):
    _check_inputs(q, k, v, q_segment_ids, k_segment_ids)
    if dout.shape != q.shape or out.shape != q.shape:
        raise ValueError(f"dout {tuple(dout.shape)} and out {tuple(out.shape)} must match q {tuple(q.shape)}")
    if tuple(lse.shape) != tuple(q.shape[:3]):
        raise ValueError(f"lse shape {tuple(lse.shape)} must be (B, H, Sq) = {tuple(q.shape[:3])}")
    check_launchable(dout, q, k, v, out, lse)
    if dout.dtype != q.dtype:  # e.g. an fp32 gradient from ring attention's fp32 accumulation
        dout = dout.to(q.dtype)
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if q.numel() == 0 or sk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    lse = lse.to(torch.float32).contiguous()
    block_d = max(16, next_power_of_2(d))
    delta = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    pre_block = 16 if interpreting() else 64
    _bwd_preprocess_kernel[(triton.cdiv(sq, pre_block), b * hq)](
        out, dout, delta, *out.stride(), *dout.stride(), hq, sq,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=pre_block,
    )
    qs, ks, seg_strides, k_ranges, q_ranges, has_seg = _seg_args(
        q, q_segment_ids, k_segment_ids, need_k_ranges=True, need_q_ranges=True
    )
    constexprs = _common_constexprs(q, causal, has_seg)
    bucket = _seq_bucket(sq, sk)
    _launch(
        _attn_bwd_dkdv_kernel,
        _attn_bwd_dkdv_kernel_tuned,
        lambda meta: (triton.cdiv(sk, meta["BLOCK_N"]), b * hkv),
        (q, k, v, dout, lse, delta, dk, dv, qs, ks, *q_ranges,
         *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), *seg_strides,
         hq, hkv, hq // hkv, sq, sk, float(scale) * LOG2E, float(scale), bucket),
        constexprs,
        _DKDV_CONFIGS,
        q.element_size(),
        dkdv_config,
    )
    _launch(
        _attn_bwd_dq_kernel,
        _attn_bwd_dq_kernel_tuned,
        lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), b * hq),
        (q, k, v, dout, lse, delta, dq, qs, ks, *k_ranges,
         *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(), *seg_strides,
         hq, hq // hkv, sq, sk, float(scale) * LOG2E, float(scale), bucket),
        constexprs,
        _DQ_CONFIGS,
        q.element_size(),
        dq_config,
    )
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------------------
# Public API (block-backend contract)
# --------------------------------------------------------------------------------------------------------------
def flash_attn_forward(q, k, v, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
    """Attention forward -> ``(out (B,Hq,Sq,D) in q.dtype, lse (B,Hq,Sq) fp32 natural log, -inf when empty)``."""
    return _forward(q, k, v, causal, scale, q_segment_ids, k_segment_ids)


def flash_attn_backward(dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
    """Attention backward against the given ``out``/``lse`` (may be the *global* ones of ring attention).

    Returns ``(dq, dk, dv)`` in the input dtypes, dk/dv with the kv head count; accumulation is fp32 throughout.
    """
    return _backward(dout, q, k, v, out, lse, causal, scale, q_segment_ids, k_segment_ids)


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: ``FlashAttentionFunction.apply(q, k, v, causal, scale, q_seg, k_seg) -> out``."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, q_segment_ids=None, k_segment_ids=None):
        out, lse = _forward(q, k, v, causal, scale, q_segment_ids, k_segment_ids)
        ctx.save_for_backward(q, k, v, out, lse, q_segment_ids, k_segment_ids)
        ctx.causal = causal
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, q_seg, k_seg = ctx.saved_tensors
        dq, dk, dv = _backward(dout, q, k, v, out, lse, ctx.causal, ctx.scale, q_seg, k_seg)
        return dq, dk, dv, None, None, None, None


def cu_seqlens_to_segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``cu_seqlens`` (N+1,) -> segment ids (1, total) int32; tokens past ``cu_seqlens[-1]`` form one extra segment."""
    cu = cu_seqlens.to(torch.int64).flatten()
    if cu.numel() < 2 or int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()) or int(cu[-1]) > total:
        raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end <= {total}, got {cu.tolist()}")
    pos = torch.arange(total, device=cu.device)
    return torch.searchsorted(cu[1:], pos, right=True).to(torch.int32)[None, :]


def flash_attention(q, k, v, causal=True, scale=None, cu_seqlens=None, segment_ids=None):
    """Differentiable flash attention on ``(B, H, S, D)`` tensors; returns ``out`` only.

    Packed/varlen input: either ``segment_ids`` (B, S) (shared by q and k, so Sq == Sk), or ``cu_seqlens``
    (N+1,) int offsets into a packed batch of one (B == 1), as in flash-attn's varlen API.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if cu_seqlens is not None and segment_ids is not None:
        raise ValueError("give either cu_seqlens or segment_ids, not both")
    if cu_seqlens is not None:
        if q.shape[0] != 1 or q.shape[2] != k.shape[2]:
            raise ValueError(f"cu_seqlens needs a packed batch of one with Sq == Sk, got q {tuple(q.shape)}")
        segment_ids = cu_seqlens_to_segment_ids(cu_seqlens, q.shape[2]).to(q.device)
    if segment_ids is not None and q.shape[2] != k.shape[2]:
        raise ValueError(f"segment_ids need Sq == Sk, got {q.shape[2]} and {k.shape[2]}")
    return FlashAttentionFunction.apply(q, k, v, causal, scale, segment_ids, segment_ids)
