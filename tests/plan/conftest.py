"""One real-shape probe for the planner tests: Qwen2-0.5B's layer shapes and real 151,936-token vocabulary, one
decoder layer and one SigLIP layer, written as a VILA-layout folder (random weights)."""

import pytest


@pytest.fixture(scope="session")
def probe_checkpoint(tmp_path_factory):
    from longvila.model.real_shapes import build_real_shape_checkpoint

    return build_real_shape_checkpoint(tmp_path_factory.mktemp("plan") / "qwen2-0.5b-1L", llm="qwen2-0.5b",
                                       llm_layers=1, vision_layers=1)
