import json

import pytest

from longvila.config import TrainArguments
from longvila.engine.deepspeed_config import build_deepspeed_config, zero_stage


def test_auto_values_follow_flags(tmp_path):
    train = TrainArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=2)
    config = build_deepspeed_config(train, world_size=4, bf16=False)
    assert config["train_batch_size"] == 24
    assert config["gradient_accumulation_steps"] == 2
    assert config["bf16"]["enabled"] is False
    assert zero_stage(config) == 2


def test_zero3_recipe_and_conflicting_values(tmp_path):
    train = TrainArguments(output_dir=str(tmp_path), deepspeed="zero3")
    assert zero_stage(build_deepspeed_config(train, world_size=1, bf16=True)) == 3
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 7}))
    with pytest.raises(ValueError, match="disagrees with the flags"):
        build_deepspeed_config(TrainArguments(output_dir=str(tmp_path), deepspeed=str(bad)), 1, False)
