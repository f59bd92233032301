"""Resume a checkpoint written under another world size or sequence-parallel layout (elastic resume).

Weights and optimizer state go through DeepSpeed's universal checkpoint: rank 0 converts the checkpoint once
(``ds_to_universal``: every ZeRO partition consolidated into one fp32 / exp_avg / exp_avg_sq / step file per
parameter, kept in ``step-N/universal``), and the engine, built with ``checkpoint.load_universal``, re-partitions
it over the new world. The universal load restores only trainable parameters, so frozen parameters and buffers
are copied back from the module state it carries (without this a frozen vision tower would come back as its
initialisation). ZeRO-3 is refused: DeepSpeed 0.19's universal loader shares one Adam ``step`` across
sub-groups and copies group 0's settings (weight decay) into every group.

Data position: every old rank's stream state is read and merged (``merge_stream_states``), so the new layout
continues with exactly the samples the old one had not consumed. RNG: new rank r takes old rank ``r % old_world``'s
state (every rank is seeded alike; nothing in a step draws rank-dependent numbers).
"""

from __future__ import annotations

import logging
import shutil
from argparse import Namespace
from pathlib import Path

import torch
import torch.distributed as dist

from longvila.engine.checkpoint_store import TRAINER_STATE, Checkpoint
from longvila.errors import CheckpointError
from longvila.engine.data_stream import merge_stream_states

logger = logging.getLogger("longvila")

UNIVERSAL = "universal"


def check_reshardable(checkpoint: Checkpoint, layout) -> None:
    """One line before any engine is built when the layouts cannot be bridged."""
    old = checkpoint.layout
    if 3 in (old.zero_stage, layout.zero_stage):
        raise CheckpointError(
            f"{checkpoint.path} was written under {old.describe()}; this run is {layout.describe()}: resuming "
            "ZeRO-3 on another layout is not supported (DeepSpeed 0.19's universal loader corrupts ZeRO-3 Adam "
            "state); resume on the same layout")
    if old.global_batch != layout.global_batch:
        logger.warning("resharding %s: its global batch was %d, this run's is %d; the data position carries over "
                       "exactly but the loss curve will differ from an uninterrupted run", checkpoint.path.name,
                       old.global_batch, layout.global_batch)


def universal_folder(checkpoint: Checkpoint, is_main: bool) -> Path:
    """``step-N/universal``, converted once by rank 0 (staged, then renamed, so a kill never leaves half)."""
    target = checkpoint.path / UNIVERSAL
    if is_main and not target.is_dir():
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        staged = checkpoint.path / f".tmp-{UNIVERSAL}"
        shutil.rmtree(staged, ignore_errors=True)
        logger.info("converting %s (%s) to a DeepSpeed universal checkpoint, once", checkpoint.path,
                    checkpoint.layout.describe())
        ds_to_universal(Namespace(input_folder=str(checkpoint.path), output_folder=str(staged),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True))
        (checkpoint.path / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; we pass the tag
        staged.rename(target)
    dist.barrier()
    return target


def restore_frozen(engine, module_states: Path) -> int:
    """Copy frozen parameters and buffers from the checkpoint's module state (the universal load skips them)."""
    saved = torch.load(module_states, map_location="cpu", weights_only=False)["module"]
    live = engine.module.state_dict(keep_vars=True)
    restored = 0
    with torch.no_grad():
        for name, value in saved.items():
            target = live.get(name)
            if target is None or (isinstance(target, torch.nn.Parameter) and target.requires_grad):
                continue
            target.copy_(value.to(device=target.device, dtype=target.dtype))
            restored += 1
    return restored


def load_trainer_states(checkpoint: Checkpoint) -> list[dict]:
    old_world = checkpoint.layout.world_size
    paths = [checkpoint.path / TRAINER_STATE.format(rank=rank) for rank in range(old_world)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise CheckpointError(f"{checkpoint.path} lacks {', '.join(missing)}; it cannot be resharded")
    return [torch.load(path, weights_only=False) for path in paths]


def load_resharded(engine, stream, checkpoint: Checkpoint, layout, rank: int, is_main: bool) -> dict:
    """Load ``checkpoint`` into ``engine`` (built with ``load_universal``) and ``stream`` for a run of ``layout``;
    returns this rank's trainer state (step, RNG) with the merged data position already loaded into the stream."""
    folder = universal_folder(checkpoint, is_main)
    load_path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the universal checkpoint {folder}")
    restored = restore_frozen(engine, Path(load_path))
    states = load_trainer_states(checkpoint)
    same_dp = [s["stream"] for s in states if s["stream"]["dp_size"] == stream.dp_size
               and s["stream"]["dp_rank"] == stream.dp_rank]
    stream.load_state_dict(same_dp[0] if same_dp else
                           merge_stream_states([s["stream"] for s in states], stream.dp_rank))
    logger.info("resharded %s from %s to %s (%d frozen tensors restored)", checkpoint.path.name,
                checkpoint.layout.describe(), layout.describe(), restored)
    return {"step": states[0]["step"], "rng": states[rank % len(states)]["rng"]}
