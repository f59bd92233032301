"""How ZeRO-3 runs load their weights: partitioned while loading, or loaded whole and partitioned by DeepSpeed.

Every stage loads straight in the training dtype from the memory-mapped safetensors files, so ranks on one node
share the file's page cache instead of each holding a private fp32 copy (benchmarks/load_memory.py; RESULTS.md).
Under ZeRO-3 a second choice remains:

* ``partitioned``: transformers builds the model inside ``deepspeed.zero.Init`` and scatters each weight to its
  owner while an ``HfDeepSpeedConfig`` is alive, so no *device* ever holds more than its partition. On CPU it was
  measured to cost more host memory at load than ``direct`` (each rank materialises the weights it scatters).
* ``direct``: the whole model is loaded (memory-mapped) and ``deepspeed.initialize`` partitions it, so each device
  briefly holds the full model before partitioning.

``auto`` takes ``partitioned`` on CUDA, where a full model per GPU is what stops large models, and ``direct`` on
CPU, where the devices are the host. Modules we build ourselves (the projector) are small and are always
partitioned by ``deepspeed.initialize``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from longvila.engine.deepspeed_config import zero_stage


ZERO3_LOAD_MODES = ("auto", "partitioned", "direct")


def wants_partitioned_load(ds_config: dict[str, Any], mode: str, device_type: str) -> bool:
    if mode not in ZERO3_LOAD_MODES:
        raise ValueError(f"--zero3_load must be one of {', '.join(ZERO3_LOAD_MODES)}, got {mode!r}")
    if zero_stage(ds_config) != 3:
        return False
    return mode == "partitioned" or (mode == "auto" and device_type == "cuda")


@contextmanager
def partitioned_loading(ds_config: dict[str, Any], enabled: bool = True) -> Iterator[bool]:
    """Within the block, transformers' ``from_pretrained`` partitions weights (when ``enabled`` and ZeRO-3).

    Yields whether it does. The global switch transformers reads is cleared on exit, so nothing after the load
    (generation, gradient checkpointing) sees a ZeRO-3 setting it did not ask for.
    """
    if not enabled or zero_stage(ds_config) != 3:
        yield False
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    handle = HfDeepSpeedConfig(ds_config)  # transformers keeps only a weak reference: hold it for the load
    try:
        yield True
    finally:
        del handle
        unset_hf_deepspeed_config()
