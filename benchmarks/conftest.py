"""Kernel microbenchmarks: pytest-benchmark, each Triton kernel against its torch baseline in the same run.

Without CUDA the kernels run in the Triton CPU interpreter (an autouse fixture sets ``TRITON_INTERPRET=1`` for each
benchmark; longvila.kernels wraps its kernels lazily at launch, so that is early enough) on tiny shapes: that checks
the benchmark plumbing and gives interpreter timings, not GPU performance.
With CUDA the real layer shapes are used.
"""

from __future__ import annotations

import pytest
import torch

ON_GPU = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _triton_interpreter_without_cuda(monkeypatch):
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture
def rounds() -> dict:
    """pytest-benchmark pedantic settings: few rounds under the slow interpreter, more on the GPU."""
    return {"rounds": 10, "warmup_rounds": 2, "iterations": 1} if ON_GPU else {"rounds": 3, "warmup_rounds": 1,
                                                                                "iterations": 1}
