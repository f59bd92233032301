"""Suite-wide setup: the embedded default is built once per test session into a private cache; `triton` tests run
only where the Triton kernels can.

Setting LONGVILA_HOME at import time (before any test imports longvila.model.tiny) keeps the suite away from the
user's ~/.cache and makes every subprocess (torchrun ranks included) share the same tiny model.

Tests marked `triton` launch the Triton kernels. They run compiled on a CUDA device; without one they need triton's
CPU interpreter, which is chosen per process when the kernels are imported (longvila/kernels/_triton.py), so they
run only in a session started with TRITON_INTERPRET=1 (`TRITON_INTERPRET=1 pytest -m triton`) and are skipped, with
that command as the reason, in any other session.
"""

import os
import tempfile

import pytest

os.environ.setdefault("LONGVILA_HOME", tempfile.mkdtemp(prefix="longvila-test-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _triton_skip_reason() -> str | None:
    """Why `triton` tests cannot run in this process, or None when they can."""
    from longvila.kernels import HAS_TRITON, triton_available

    if not HAS_TRITON:
        return "triton is not installed"
    if triton_available():  # a CUDA device, or this process runs the interpreter
        return None
    return "Triton kernels without CUDA: they run in the interpreter session, TRITON_INTERPRET=1 pytest -m triton"


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("triton") is not None]
    if not marked:
        return
    reason = _triton_skip_reason()
    if reason is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for child launches (torchrun, python -m) from a test process that may have initialised
    torch.distributed in-process."""
    from longvila.engine.dist import child_environment

    return child_environment()
