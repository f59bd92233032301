"""Kernel microbenchmarks: pytest-benchmark, each Triton kernel against its torch baseline in the same run.

With CUDA the real layer shapes are used and the kernels run compiled. Without CUDA the kernels can only run in the
Triton CPU interpreter, which is chosen per process when longvila.kernels is imported (longvila/kernels/_triton.py):
``TRITON_INTERPRET=1 pytest benchmarks/ --benchmark-only`` runs them on tiny shapes, which checks the benchmark
plumbing and gives interpreter timings, not GPU performance. In a CPU session without the variable the `triton`
benchmarks are skipped (the torch baselines still run), rather than quietly timing a torch fallback.
"""

from __future__ import annotations

import pytest
import torch

ON_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    from longvila.kernels import HAS_TRITON, triton_available

    if triton_available():  # a CUDA device, or this process runs the interpreter
        return
    reason = ("triton is not installed" if not HAS_TRITON else
              "Triton kernels without CUDA: run TRITON_INTERPRET=1 pytest benchmarks/ --benchmark-only")
    for item in items:
        if item.get_closest_marker("triton") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture
def rounds() -> dict:
    """pytest-benchmark pedantic settings: few rounds under the slow interpreter, more on the GPU."""
    return {"rounds": 10, "warmup_rounds": 2, "iterations": 1} if ON_GPU else {"rounds": 3, "warmup_rounds": 1,
                                                                                "iterations": 1}
