"""Local attention block backends: the per-block compute that ring / Ulysses / 2D attention call.

Every backend implements the contract of ``longvila/distributed/block_contract.py``. Backends: ``math`` (the
contract's explicit reference, any device, fp64-capable), ``torch`` (PyTorch's CPU flash-attention op, or on CUDA
its fp16/bf16 FlashAttention-2 op, both with LSE; math where neither applies), ``triton``
(``longvila.kernels.flash_attention``, imported lazily, segment ids native), ``flash_attn`` (the flash-attn package,
only when it imports). ``torch`` and ``flash_attn`` take no mask: packed documents run one sub-block each
(``longvila/distributed/document_split.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch

from .block_contract import BlockBackend, MathBackend, check_block_inputs
from .document_split import DocumentSplitBackend
from .lse import merge_attention, normalise_lse
from .torch_flash_ops import (cpu_flash_backward, cpu_flash_forward, cuda_flash_backward,
                              cuda_flash_forward, flash_rng_placeholders, uses_cuda_flash)


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
ATTN_BACKENDS = ("auto", *_FACTORIES)
"""``--attn_backend``'s choices: "auto" and every backend name; the one list (``resolve_backend`` checks it)."""


def available_backends() -> list[str]:
    """Names that :func:`get_block_backend` knows (``triton``/``flash_attn`` may still fail to import)."""
    return sorted(_FACTORIES)


def _check_runnable(name: str, device: torch.device) -> None:
    """ValueError naming what is missing when backend ``name`` cannot run on ``device`` in this process."""
    from longvila.kernels import require_triton

    if name == "triton":
        require_triton(device, "attn backend 'triton'")
    elif name == "flash_attn":
        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError("attn backend 'flash_attn' needs the flash-attn package (pip install "
                             "longvila[flash-attn])")
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"attn backend 'flash_attn' needs a CUDA device, got {device}")


def resolve_backend(name: str, device: torch.device | str) -> BlockBackend:
    """``--attn_backend`` for ``device`` as a backend object: "auto" is Triton on CUDA (where it can launch) and
    torch elsewhere (flash_attn only when asked for by name); a backend that cannot run here is refused in one
    line that names what is missing, before any compute."""
    from longvila.kernels import triton_available

    if name not in ATTN_BACKENDS:
        raise ValueError(f"unknown attn backend {name!r}; choose one of {', '.join(ATTN_BACKENDS)}")
    dev = torch.device(device)
    if name == "auto":
        name = "triton" if dev.type == "cuda" and triton_available(dev) else "torch"
    _check_runnable(name, dev)
    return _FACTORIES[name]()


def get_block_backend(backend: str | BlockBackend = "torch") -> BlockBackend:
    """A new backend object for a name; a backend object (anything with callable ``.forward``/``.backward``) is
    returned unchanged. Unlike :func:`resolve_backend` it does not check the device: the distributed functions
    take names in tests and benchmarks, where the caller picked the backend for the device.

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
