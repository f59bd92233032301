"""One real-shape probe for the planner tests (``longvila.plan.measured.LIVE_PROBE``): Qwen2-0.5B's layer shapes and
real 151,936-token vocabulary, two decoder layers and one SigLIP layer, written as a VILA-layout folder (random
weights)."""

import pytest


@pytest.fixture(scope="session")
def probe_checkpoint(tmp_path_factory):
    from longvila.plan.measured import build_live_probe

    return build_live_probe(tmp_path_factory.mktemp("plan") / "probe")
