import pytest

from .world import World


@pytest.fixture(scope="session")
def world4():
    """Four real gloo ranks, shared by every multi-process test of the session."""
    w = World(4)
    yield w
    w.close()
