"""A CPU stand-in for ``flash_attn.flash_attn_interface``, so the ``flash_attn`` block backend's own code (layout
transposes, version-dependent signatures and return tuples, per-document splitting) runs in CI.

flash-attn is CUDA-only and cannot be installed here. The stand-in keeps upstream's internal signatures (2.6:
``window_size`` tuple and an 8-tuple return; 2.7+: ``window_size_left/right`` and a 4-tuple return, backward
writing into ``dq/dk/dv``), its (B, S, H, D) layout, and its input checks, and computes with PyTorch's CPU
flash-attention op. Argument names or positions that do not bind fail here as they would against the package.
"""

from __future__ import annotations

import sys
import types

import torch


def _check_inputs(*tensors, dropout_p, softcap, alibi_slopes, windows):
    for t in tensors:
        assert t.dtype in (torch.float16, torch.bfloat16), f"flash-attn takes fp16/bf16, got {t.dtype}"
        assert t.stride(-1) == 1, "flash-attn needs a contiguous last dimension"
    assert dropout_p == 0.0 and softcap == 0.0 and alibi_slopes is None and tuple(windows) == (-1, -1)


def _forward(q, k, v, softmax_scale, causal):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, causal, attn_mask=None, scale=softmax_scale)
    return out.transpose(1, 2).contiguous(), lse.float().contiguous()


def _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, softmax_scale, causal):
    assert softmax_lse.dtype == torch.float32 and softmax_lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout.transpose(1, 2), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), out.transpose(1, 2),
        softmax_lse, 0.0, causal, attn_mask=None, scale=softmax_scale)
    for buf, g in zip((dq, dk, dv), grads):
        buf.copy_(g.transpose(1, 2))
    return torch.zeros_like(softmax_lse)  # softmax_d


def interface_v27():
    def _flash_attn_forward(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right,
                            softcap, alibi_slopes, return_softmax):
        _check_inputs(q, k, v, dropout_p=dropout_p, softcap=softcap, alibi_slopes=alibi_slopes,
                      windows=(window_size_left, window_size_right))
        out, lse = _forward(q, k, v, softmax_scale, causal)
        return out, lse, None, torch.zeros(2, dtype=torch.int64)

    def _flash_attn_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal,
                             window_size_left, window_size_right, softcap, alibi_slopes, deterministic,
                             rng_state=None):
        _check_inputs(dout, q, k, v, out, dropout_p=dropout_p, softcap=softcap, alibi_slopes=alibi_slopes,
                      windows=(window_size_left, window_size_right))
        return _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, softmax_scale, causal)

    return _flash_attn_forward, _flash_attn_backward


def interface_v26():
    def _flash_attn_forward(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                            return_softmax):
        _check_inputs(q, k, v, dropout_p=dropout_p, softcap=softcap, alibi_slopes=alibi_slopes, windows=window_size)
        out, lse = _forward(q, k, v, softmax_scale, causal)
        return out, q, k, v, out, lse, None, torch.zeros(2, dtype=torch.int64)

    def _flash_attn_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal,
                             window_size, softcap, alibi_slopes, deterministic, rng_state=None):
        _check_inputs(dout, q, k, v, out, dropout_p=dropout_p, softcap=softcap, alibi_slopes=alibi_slopes,
                      windows=window_size)
        return _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, softmax_scale, causal)

    return _flash_attn_forward, _flash_attn_backward


def install(monkeypatch, version: str) -> None:
    """Make ``from flash_attn import flash_attn_interface`` import the stand-in of ``version`` ("2.6" or "2.7")."""
    forward, backward = {"2.6": interface_v26, "2.7": interface_v27}[version]()
    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface._flash_attn_forward, interface._flash_attn_backward = forward, backward
    package = types.ModuleType("flash_attn")
    package.flash_attn_interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.flash_attn_interface", interface)
