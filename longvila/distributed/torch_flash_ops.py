"""PyTorch's own flash-attention ops with a log-sum-exp, as plain functions of the block-backend contract.

Why plain functions: the ``torch`` block backend (``longvila/distributed/block_attention.py``) runs them per block
and per document, and their argument binding and output shapes can be checked on ``meta`` tensors on a machine
without CUDA. They take no mask: the backend splits packed documents into mask-free sub-blocks before calling them.
"""

from __future__ import annotations

import torch

from .lse import normalise_lse


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for every input dtype but fp64 (the reference tests' dtype): what LSEs and accumulators use."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def uses_cuda_flash(q: torch.Tensor) -> bool:
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
    return out, lse.to(accumulation_dtype(q)).contiguous()


def cpu_flash_backward(dout, q, k, v, out, lse, *, causal: bool, scale: float):
    """``aten._scaled_dot_product_flash_attention_for_cpu_backward`` against a given (global) out/LSE."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout.to(q.dtype).contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.to(q.dtype).contiguous(),
        lse.to(accumulation_dtype(q)).contiguous(), 0.0, causal, attn_mask=None, scale=scale)


def cuda_flash_forward(q, k, v, *, causal: bool, scale: float):
    """``aten._scaled_dot_product_flash_attention``: (out, natural-log fp32 LSE (B, H, S)); native GQA.

    A plain function of the op, so that its argument binding and output shapes can be checked on ``meta`` tensors
    on a machine without CUDA.
    """
    res = torch.ops.aten._scaled_dot_product_flash_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), 0.0, causal, False, scale=scale)
    return res[0], normalise_lse(res[1])


def cuda_flash_backward(dout, q, k, v, out, lse, *, causal: bool, scale: float, rng_state=None):
    """``aten._scaled_dot_product_flash_attention_backward`` against a given (global) out/LSE.

    Without dropout the op never reads its random-number state, and without cumulative sequence lengths it runs
    the dense path, so those arguments are placeholders (``rng_state``: :func:`flash_rng_placeholders`, built here
    when not given). ``max_q``/``max_k`` are the block lengths.
    """
    seed, offset = rng_state if rng_state is not None else flash_rng_placeholders(q.device)
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
        dout.to(q.dtype).contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.to(q.dtype).contiguous(),
        lse.float().contiguous(), None, None, q.shape[2], k.shape[2], 0.0, causal, seed, offset, scale=scale)
    return dq, dk, dv


def flash_rng_placeholders(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero tensors shaped like the random-number state the flash forward returns in this torch version.

    Ring attention runs each block's backward without that block's forward outputs. The state's shape and dtype
    changed across torch releases (two int64 scalars, then a (2,) uint64 tensor). The forward's shape function on
    ``meta`` tensors says which one this torch uses. The torch backend builds them once per device and reuses them
    (the backward only reads them), so a block's backward does no extra dispatch or allocation.
    """
    probe = torch.empty(1, 1, 1, 8, device="meta", dtype=torch.float16)
    res = torch.ops.aten._scaled_dot_product_flash_attention(probe, probe, probe, 0.0, False, False)
    return tuple(torch.zeros(t.shape, dtype=t.dtype, device=device) for t in res[6:8])
