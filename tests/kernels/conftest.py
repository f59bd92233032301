"""Kernel tests run the real Triton kernels: on CUDA when present, else in the Triton CPU interpreter.

Without CUDA an autouse fixture sets ``TRITON_INTERPRET=1`` for every test in this directory (and only there: set
at import time it would leak into every other test of a full ``pytest tests`` run, making ``triton_available()``
and the fused kernels' auto-selection depend on which directories were collected). Setting it late is safe
because ``longvila.kernels`` wraps its kernels with ``triton.jit`` lazily, at their first launch, in the mode
active at that moment; when triton itself was imported (by pytest plugins or other packages) does not matter.
``test_interpreter_is_active_on_cpu`` (test_backend_selection.py) checks that kernels really run on CPU tensors.
With CUDA the variable is left alone and the same tests run compiled on the GPU.

Inputs are fresh random draws on every run (seed from ``KERNEL_TEST_SEED`` when set, so a failure can be replayed;
each failure message names the seed through the ``make`` fixture's repr).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _triton_interpreter_without_cuda(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def make() -> _Maker:
    seed = os.environ.get("KERNEL_TEST_SEED")
    seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
    return _Maker(seed)


@pytest.fixture
def device() -> torch.device:
    return DEVICE
