"""Shared Triton plumbing for the kernel modules: optional import, the process's Triton mode, launch checks.

The kernels are ordinary module-level ``@triton.jit`` functions. ``triton.jit`` decides when it decorates a function
whether it becomes a compiled GPU kernel or an ``InterpretedFunction`` of triton's CPU interpreter
(``TRITON_INTERPRET=1``), and triton's own library functions (``tl.max``, ``tl.sum``, ...) are decorated the same way
when triton is imported. So the mode belongs to the process: it is set by ``TRITON_INTERPRET`` in the environment the
process starts with (``TRITON_INTERPRET=1 pytest -m triton``), and changing the variable later has no effect here.
:func:`interpreting` reads it once, when this module is imported, so that the launchers' interpreter-only choices
(small blocks, fp32 upcasts, one warp) and :func:`check_launchable` always agree with the kernels.

GPU autotuning (``triton.autotune``) is built only for compiled kernels (:func:`autotuned`): the interpreter runs one
launch config, which the launchers pass explicitly.

Everything here imports without triton (for example on macOS): ``triton`` is then a stand-in whose ``jit`` keeps
the function and raises a clear error if it is launched, so the kernel modules still import, their torch references
work, and launching a kernel raises a clear error (:func:`check_launchable` raises it before any launch).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

_MISSING = "triton is not installed; the Triton kernels are unavailable"

try:  # triton is a Linux-only dependency
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

    class _MissingLanguage:
        """Stands in for ``triton.language`` so that ``tl.constexpr`` annotations still evaluate."""

        constexpr = object

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(_MISSING)

    class _UnavailableKernel:
        """What ``@triton.jit`` gives without triton: the plain function, which cannot be launched."""

        def __init__(self, fn: Callable) -> None:
            self.fn = fn
            self.__name__ = fn.__name__
            self.__doc__ = fn.__doc__

        def __getitem__(self, grid: Any) -> Any:
            raise RuntimeError(_MISSING)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(_MISSING)

    class _MissingTriton:
        """Stands in for the ``triton`` module: ``@triton.jit`` still decorates, launching raises."""

        @staticmethod
        def jit(fn: Callable | None = None, **kwargs: Any) -> Any:
            return _UnavailableKernel(fn) if fn is not None else _UnavailableKernel

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(_MISSING)

    tl = _MissingLanguage()  # type: ignore[assignment]
    triton = _MissingTriton()  # type: ignore[assignment]


def _interpret_from_environment() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_INTERPRET = _interpret_from_environment()


def interpreting() -> bool:
    """True when this process runs Triton kernels in the CPU interpreter: ``TRITON_INTERPRET=1`` was set when
    longvila.kernels was first imported (the mode of every ``@triton.jit`` kernel here; see the module docstring)."""
    return _INTERPRET


def autotune_enabled() -> bool:
    """GPU autotuning is on unless ``LONGVILA_TRITON_AUTOTUNE=0`` (fixed default configs: reproducible across
    processes and ranks, and no tuning pause at the first step)."""
    return os.environ.get("LONGVILA_TRITON_AUTOTUNE", "1").strip() != "0"


def autotuned(kernel: Any, configs: list, key: list[str]) -> Any:
    """``triton.autotune(configs, key)`` around a jitted kernel, for compiled launches; None under the interpreter
    (one config only, passed by the launcher) and without triton. The plain kernel stays launchable with an
    explicit config (``LONGVILA_TRITON_AUTOTUNE=0``, the interpreter, benchmarks/tune_flash_attention.py)."""
    if not HAS_TRITON or _INTERPRET:
        return None
    return triton.autotune(configs=configs, key=key)(kernel)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def check_launchable(*tensors: torch.Tensor) -> None:
    """Raise a clear error when a Triton kernel cannot run on these tensors in this process."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use the torch reference or attn backend 'torch'")
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"tensors must share one device, got {sorted(str(d) for d in devices)}")
    device = next(iter(devices))
    if device.type != "cuda" and not interpreting():
        if _interpret_from_environment():
            raise RuntimeError(
                f"Triton kernels need a CUDA device (got {device}): TRITON_INTERPRET=1 was set after longvila.kernels "
                "was imported, so the kernels are compiled ones; set it in the environment that starts the process"
            )
        raise RuntimeError(
            f"Triton kernels need a CUDA device (got {device}); set TRITON_INTERPRET=1 in the environment of the "
            "process for the (slow) CPU interpreter"
        )


def triton_usable(*tensors: torch.Tensor) -> bool:
    """True when a Triton kernel can run on these tensors here (all on CUDA, or the CPU interpreter is on)."""
    if not HAS_TRITON:
        return False
    return interpreting() or all(t.is_cuda for t in tensors if t is not None)
