"""Fill a DeepSpeed JSON (with HF-style "auto" values) from our training arguments."""

from __future__ import annotations

import json
from typing import Any

from longvila.config import TrainArguments
from longvila.recipes import deepspeed_config_path


def build_deepspeed_config(train: TrainArguments, world_size: int, bf16: bool) -> dict[str, Any]:
    """Resolve "auto" entries so the JSON and the flags can never disagree about batch size or precision.

    ``train.deepspeed`` is a file or a packaged name (``zero3``); unset means the packaged ZeRO-2 config.
    """
    path = deepspeed_config_path(train.deepspeed)
    config = json.loads(path.read_text())
    resolved = {
        "train_micro_batch_size_per_gpu": train.per_device_train_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.per_device_train_batch_size * train.gradient_accumulation_steps * world_size,
        "gradient_clipping": train.max_grad_norm,
    }
    for key, value in resolved.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
        elif config[key] != value:
            raise ValueError(f"{path}: {key}={config[key]} disagrees with the flags ({value}); use \"auto\"")
    config["bf16"] = {**config.get("bf16", {}), "enabled": bf16}
    config.pop("fp16", None)
    config.setdefault("zero_optimization", {"stage": 2})
    config["zero_allow_untested_optimizer"] = True
    config.setdefault("steps_per_print", 10**9)
    return config


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))
