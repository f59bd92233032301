"""Shared Triton plumbing for the kernel modules: optional import, mode detection, lazy ``triton.jit``.

Why lazy: ``triton.jit`` decides at *decoration* time whether a function becomes a compiled GPU kernel or an
``InterpretedFunction`` (``TRITON_INTERPRET=1``). If a kernel module were imported before the test suite set
that variable (any other package may import it first), every launch on CPU tensors would fail. Here kernels are
kept as plain Python functions and wrapped on first launch, in the mode active at that moment; helper functions
that kernels call are re-bound in the module globals to the same mode before each launch, so an interpreted
kernel never calls a compiled helper (or vice versa). (Compiling for the GPU after interpreting in the same
process is not reliable: the interpreter leaves parts of ``triton.language`` patched.)

One thing laziness cannot fix: triton's own library functions (``tl.max``, ``tl.sum``, ``tl.min``, ``tl.zeros``)
are ``triton.jit`` functions wrapped when *triton* is imported, and transformers imports triton. So the kernels here
never call them: reductions are written as ``tl.reduce(x, axis, tl.standard._elementwise_max / _elementwise_min /
_sum_combine)`` (exactly what ``tl.max``/``tl.min``/``tl.sum`` expand to for fp32 and int32, and what the
interpreter recognises for its fast numpy path) and ``tl.zeros`` as ``tl.full(shape, 0.0, dtype)``. The kernels
then run in the interpreter whenever ``TRITON_INTERPRET=1`` is set before their first launch, whatever imported
triton first (tests/kernels/test_backend_selection.py checks this).

Everything here imports without triton (for example on macOS): the kernel modules then still import, their
torch references work, and launching a kernel raises a clear error.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import torch

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
            raise RuntimeError("triton is not installed; the Triton kernels are unavailable")

    tl = _MissingLanguage()  # type: ignore[assignment]
    triton = None  # type: ignore[assignment]


def interpreting() -> bool:
    """True when the Triton CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def autotune_enabled() -> bool:
    """GPU autotuning is on unless ``LONGVILA_TRITON_AUTOTUNE=0`` (fixed default configs: reproducible across
    processes and ranks, and no tuning pause at the first step)."""
    return os.environ.get("LONGVILA_TRITON_AUTOTUNE", "1").strip() != "0"


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
        raise RuntimeError(
            f"Triton kernels need a CUDA device (got {device}); set TRITON_INTERPRET=1 for the (slow) CPU interpreter"
        )


def triton_usable(*tensors: torch.Tensor) -> bool:
    """True when a Triton kernel can run on these tensors here (all on CUDA, or the CPU interpreter is on)."""
    if not HAS_TRITON:
        return False
    return interpreting() or all(t.is_cuda for t in tensors if t is not None)


class LazyKernels:
    """Builds a module's Triton kernels on first use in the current mode (interpreter or compiled).

    ``helpers`` are device functions called from kernels by their global name; ``kernels`` are launched through
    :meth:`get`. ``autotune`` maps a kernel name to ``(configs, key)``: on the GPU the kernel is wrapped in
    ``triton.autotune``; under the interpreter (which supports one config only) the launcher passes
    ``interpret_config`` instead.
    """

    def __init__(
        self,
        module_globals: dict,
        helpers: Iterable[Callable] = (),
        kernels: Iterable[Callable] = (),
        autotune: dict[str, tuple[list, list[str]]] | None = None,
    ) -> None:
        self._globals = module_globals
        self._helpers = {f.__name__: f for f in helpers}
        self._kernels = {f.__name__: f for f in kernels}
        self._autotune = autotune or {}
        self._built: dict[bool, dict[str, Any]] = {}

    def _build(self, interpret: bool) -> dict[str, Any]:
        if not HAS_TRITON:
            raise RuntimeError("triton is not installed; the Triton kernels are unavailable")
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            built: dict[str, Any] = {}
            for name, fn in {**self._helpers, **self._kernels}.items():
                jitted = triton.jit(fn)
                if not interpret and name in self._autotune:
                    configs, key = self._autotune[name]
                    jitted = triton.autotune(configs=configs, key=key)(jitted)
                built[name] = jitted
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
        return built

    def get(self, name: str, interpret: bool | None = None) -> tuple[Any, bool]:
        """Return ``(kernel, autotuned)`` for the current mode (or the one asked for), helpers bound to it.

        An autotuned kernel's plain ``JITFunction`` is its ``.fn`` (returned instead when autotuning is off, and
        used to compile for a GPU target on a machine without one, see tests/kernels/test_flash_attention.py).
        """
        if interpret is None:
            interpret = interpreting()
        if interpret not in self._built:
            self._built[interpret] = self._build(interpret)
        built = self._built[interpret]
        for helper in self._helpers:
            self._globals[helper] = built[helper]
        kernel = built[name]
        if not interpret and name in self._autotune:
            if autotune_enabled():
                return kernel, True
            return kernel.fn, False
        return kernel, False
