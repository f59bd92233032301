"""Suite-wide setup: the embedded default is built once per test session into a private cache.

Setting LONGVILA_HOME at import time (before any test imports longvila.model.tiny) keeps the suite away from the
user's ~/.cache and makes every subprocess (torchrun ranks included) share the same tiny model.
"""

import os
import tempfile

import pytest

os.environ.setdefault("LONGVILA_HOME", tempfile.mkdtemp(prefix="longvila-test-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@pytest.fixture
def subprocess_env() -> dict:
    """Environment for child launches (torchrun, python -m) from a test process that may have initialised
    torch.distributed in-process."""
    from longvila.engine.dist import child_environment

    return child_environment()
