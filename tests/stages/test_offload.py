"""The packaged offload configs (optimizer state, and with ZeRO-3 the weights, in host memory) train exactly like
ZeRO-2; ``longvila plan`` picks them when a run does not fit otherwise."""

import subprocess
import sys

import pytest

from longvila.engine.metrics import read_metrics


def test_offload_configs_train_like_zero2(stage_flags, subprocess_env, tmp_path):
    runs = {}
    for name in ("zero2", "zero2_offload", "zero3_offload"):
        command = [sys.executable, "-m", "longvila.stages.s3_sft",
                   *stage_flags("s3_sft", tmp_path / name, "--deepspeed", name)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = read_metrics(tmp_path / name)
    for name in ("zero2_offload", "zero3_offload"):
        for key in ("loss", "grad_norm"):
            assert [r[key] for r in runs[name]] == pytest.approx([r[key] for r in runs["zero2"]], rel=1e-5), key
