"""Triton kernels (flash attention with LSE, LSE merge, RMSNorm, RoPE, chunked linear+CE) and whether they can run.

Which attention backend a run uses is decided in one place, ``longvila/distributed/block_attention.py``
(``resolve_backend``); this package only says whether Triton can launch here.

Each kernel lives in its own module beside its ``torch.autograd.Function`` (and, for RMSNorm, RoPE and the
chunked cross-entropy, the torch path that runs where a kernel cannot launch). The kernels are tested against the
references the rest of the package already has (the block backends' ``MathBackend``, the model's
``cross_entropy_sum``, the RMSNorm and RoPE torch paths) in fp64. This package imports on any machine (CPU-only, or without triton at all); only launching a kernel needs a CUDA device
or the CPU interpreter, which a process gets by starting with ``TRITON_INTERPRET=1`` in its environment (the mode is
fixed when the kernels are imported; see ``_triton.py``). Kernel modules are imported lazily by their users.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, interpreting

def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run here: on CUDA with triton installed, or anywhere under the interpreter.

    Without ``device`` the question is about this process: a visible CUDA device or ``TRITON_INTERPRET=1``.
    On a CPU-only machine this is False unless ``TRITON_INTERPRET=1``.
    """
    if not HAS_TRITON:
        return False
    if interpreting():
        return True
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def require_triton(device: torch.device | str, what: str) -> None:
    """Raise ValueError, naming ``what`` and the fix, unless the Triton kernels can run on ``device`` here.

    Callers use it before any compute, so that a flag that asks for Triton never quietly runs something else.
    """
    if not HAS_TRITON:
        raise ValueError(f"{what} needs the triton package, which is not installed")
    dev = torch.device(device)
    if not triton_available(dev):
        raise ValueError(
            f"{what} cannot run on {dev}: it needs a CUDA device, or TRITON_INTERPRET=1 for the (slow) CPU "
            "interpreter"
        )


__all__ = ["require_triton", "triton_available"]
