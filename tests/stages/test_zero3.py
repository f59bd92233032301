"""ZeRO-3: weights are partitioned while they load, and training equals ZeRO-2 step for step."""

import subprocess
import sys

import pytest
import torch

from longvila.engine.metrics import read_metrics
from longvila.model.checkpoint import load_vila


def torchrun_stage(stage, flags, env):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", f"longvila.stages.{stage}", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow
def test_zero3_partitions_at_load_and_trains_like_zero2(stage_flags, subprocess_env, tmp_path):
    """Stage 3 trains all three parts, so every parameter goes through the partitioned load and the gather."""
    runs = {}
    for name, flags in (("zero2", ["--deepspeed", "zero2"]), ("zero3", ["--deepspeed", "zero3"]),
                        ("zero3_partitioned", ["--deepspeed", "zero3", "--zero3_load", "partitioned"])):
        log = torchrun_stage("s3_sft", stage_flags("s3_sft", tmp_path / name, *flags),
                             subprocess_env)
        assert ("ZeRO-3 partitioned at load" in log) == (name == "zero3_partitioned"), log[-2000:]
        runs[name] = read_metrics(tmp_path / name)
    two, _, _ = load_vila(tmp_path / "zero2")
    for name in ("zero3", "zero3_partitioned"):
        for key in ("loss", "grad_norm"):
            assert [r[key] for r in runs[name]] == pytest.approx([r[key] for r in runs["zero2"]], rel=1e-5), key
        three, _, _ = load_vila(tmp_path / name)
        for (param, a), (_, b) in zip(two.state_dict().items(), three.state_dict().items()):
            assert torch.allclose(a, b, atol=1e-5), (name, param)


def test_partitioned_loading_is_scoped_to_zero3():
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from longvila.engine.zero3_loading import partitioned_loading, wants_partitioned_load

    zero3 = {"zero_optimization": {"stage": 3}}
    assert wants_partitioned_load(zero3, "auto", "cuda") and not wants_partitioned_load(zero3, "auto", "cpu")
    assert wants_partitioned_load(zero3, "partitioned", "cpu") and not wants_partitioned_load(zero3, "direct", "cuda")
    assert not wants_partitioned_load({"zero_optimization": {"stage": 2}}, "partitioned", "cuda")
    with partitioned_loading(zero3, enabled=False) as partitioned:
        assert not partitioned and not is_deepspeed_zero3_enabled()
    with partitioned_loading({"zero_optimization": {"stage": 2}}) as partitioned:
        assert not partitioned and not is_deepspeed_zero3_enabled()
    with partitioned_loading({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}) as on:
        assert on and is_deepspeed_zero3_enabled()
    assert not is_deepspeed_zero3_enabled()
