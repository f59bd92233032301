"""The packaged offload configs (optimizer state, and with ZeRO-3 the weights, in host memory) train exactly like
ZeRO-2; ``longvila plan`` picks them when a run does not fit otherwise."""

import pytest

from longvila.stages import stage_spec
from longvila.stages.common import run_stage


def test_offload_configs_train_like_zero2(stage_flags, tmp_path):
    """Stage 3 trains all three parts, so every parameter's optimizer state (and ZeRO-3 weight) is offloaded."""
    runs = {name: run_stage(stage_spec("s3_sft"), stage_flags("s3_sft", tmp_path / name, "--deepspeed", name)).history
            for name in ("zero2", "zero2_offload", "zero3_offload")}
    for name in ("zero2_offload", "zero3_offload"):
        for key in ("loss", "grad_norm"):
            assert [r[key] for r in runs[name]] == pytest.approx([r[key] for r in runs["zero2"]], rel=1e-5), key
