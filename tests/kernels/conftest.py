"""Kernel tests run the real Triton kernels: on CUDA when present, else in the Triton CPU interpreter.

``TRITON_INTERPRET=1`` is set here at import time, before any test module imports a kernel module. It does not
matter if triton itself was imported earlier (pytest plugins or other packages may do that): triton reads the
variable when a kernel is wrapped, and ``longvila.kernels`` wraps its kernels lazily at their first launch, so the
mode active at launch time is the one used. ``test_interpreter_is_active`` (test_backend_selection.py) checks that
kernels really run on CPU tensors. With CUDA the variable is left alone and the same tests run compiled on the GPU.

Inputs are fresh random draws on every run (seed from ``KERNEL_TEST_SEED`` when set, so a failure can be replayed;
each test's seed is in its failure message via the ``make`` fixture's ``seed`` attribute).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Maker:
    """Random tensors drawn on CPU in float64 from one seeded generator, then cast and moved to the device."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self.device = DEVICE

    def __call__(self, *shape, dtype=torch.float32, scale=1.0, device=None):
        t = torch.randn(*shape, generator=self.gen, dtype=torch.float64) * scale
        return t.to(device=device or self.device, dtype=dtype)

    def randint(self, low, high, shape, device=None):
        return torch.randint(low, high, shape, generator=self.gen).to(device or self.device)

    def __repr__(self) -> str:
        return f"KERNEL_TEST_SEED={self.seed}"


@pytest.fixture
def make() -> _Maker:
    seed = os.environ.get("KERNEL_TEST_SEED")
    seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
    return _Maker(seed)


@pytest.fixture
def device() -> torch.device:
    return DEVICE
