"""The ``flash_attn`` block backend: the flash-attn package's internal forward/backward (optional dependency).

Kept apart from ``longvila/distributed/block_attention.py`` because the package is optional and CUDA-only; the
per-document splitting and the math fallback come from ``longvila/distributed/document_split.py``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .document_split import DocumentSplitBackend
from .lse import normalise_lse


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
