"""Kernel tests run the real Triton kernels: compiled on CUDA when present, else in the Triton CPU interpreter.

The interpreter is a property of the process (longvila/kernels/_triton.py), so on a machine without CUDA the tests
that launch a kernel are marked `triton` and run in their own session, ``TRITON_INTERPRET=1 pytest -m triton``
(tests/conftest.py skips them in any other session without CUDA). The remaining tests (input validation, torch
references, compiling for an H100 without a GPU, behaviour without the interpreter) run in the ordinary session.
``test_interpreter_is_active_on_cpu`` (test_backend_selection.py) checks that the interpreter session really runs
kernels on CPU tensors. With CUDA the same tests run compiled on the GPU.

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


@pytest.fixture
def make() -> _Maker:
    seed = os.environ.get("KERNEL_TEST_SEED")
    seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
    return _Maker(seed)


@pytest.fixture
def device() -> torch.device:
    return DEVICE
