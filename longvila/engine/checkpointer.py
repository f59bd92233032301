"""Resumable checkpoints of a run: save, load, reshard, and the engine setting a resharded load needs.

The trainer is the loop; this object owns everything about checkpoints, and is given what it saves explicitly
(the DeepSpeed engine, the data stream, and the RNG of this process) instead of reaching into the trainer. The
folder format and its completeness rules are ``longvila/engine/checkpoint_store.py``'s; resharding a checkpoint
written by another layout is ``longvila/engine/reshard.py``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from longvila.engine import checkpoint_store as store
from longvila.engine.checkpoint_store import TRAINER_STATE, RunLayout
from longvila.engine.faults import inject
from longvila.engine.rng import rng_state, set_rng_state
from longvila.errors import CheckpointError

logger = logging.getLogger("longvila")


class Checkpointer:
    """Checkpoints under ``root`` for a run of ``layout``; ``rank``/``is_main`` are this process's, ``fault`` the
    planned fault drill (``longvila/engine/faults.py``), ``keep`` how many complete checkpoints survive pruning."""

    def __init__(self, root: Path, layout: RunLayout, rank: int, is_main: bool, keep: Optional[int],
                 fault: Any = None):
        self.root, self.layout, self.keep, self.fault = root, layout, keep, fault
        self.rank, self.is_main = rank, is_main
        self.last: Optional[Path] = None  # the newest complete checkpoint this run saved or resumed from

    def resume_request(self, spec: Optional[str]) -> Optional[store.Checkpoint]:
        """The checkpoint ``--resume_from_checkpoint`` names (``auto``: the newest complete one, or none), checked
        to be loadable into this layout (file for file, or by resharding)."""
        checkpoint = store.resolve_resume_request(spec, self.root)
        if checkpoint is not None and not checkpoint.layout.same_sharding(self.layout):
            from longvila.engine.reshard import check_reshardable

            check_reshardable(checkpoint, self.layout)
        return checkpoint

    def engine_config(self, ds_config: dict, resume: Optional[store.Checkpoint]) -> dict:
        """``ds_config`` for the engine that will load ``resume``: one written by another layout loads as a
        DeepSpeed universal checkpoint, which the engine must know before it is built."""
        if resume is None or resume.layout.same_sharding(self.layout):
            return ds_config
        return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}

    def save(self, step: int, engine, stream) -> Path:
        """Model + optimizer + scheduler (DeepSpeed) and, per rank, data position + RNG (ours); atomic: every rank
        writes into a staging folder that rank 0 publishes after a barrier."""
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            store.clear_staging(self.root, step)
        dist.barrier()
        staged = self.root / store.staging_name(step)
        try:
            engine.save_checkpoint(str(self.root), tag=staged.name, client_state={"step": step}, save_latest=False)
            inject(self.fault, "mid_save", step, self.rank)
            state = {"step": step, "stream": stream.state_dict(), "rng": rng_state()}
            state_path = staged / TRAINER_STATE.format(rank=self.rank)
            inject(self.fault, "enospc", step, self.rank, str(state_path))
            torch.save(state, state_path)
        except (OSError, RuntimeError) as error:
            reason = store.save_failure_reason(error, self.root)
            if reason is None:
                raise
            previous = self.last.name if self.last else "none"
            raise CheckpointError(
                f"saving checkpoint step-{step} failed on rank {self.rank}: {reason}; "
                f"the last complete checkpoint ({previous}) is intact and {staged.name} is left for inspection"
            ) from error
        dist.barrier()
        if self.is_main:
            store.publish(self.root, step, self.layout)
            store.prune(self.root, self.keep)
        dist.barrier()
        self.last = self.root / f"step-{step}"
        inject(self.fault, "after_save", step, self.rank)
        return self.last

    def load(self, checkpoint: store.Checkpoint, engine, stream) -> int:
        """Load ``checkpoint`` into ``engine`` and ``stream`` and this process's RNG; returns its step. Same
        layout: every rank reads its own files; another layout: a resharded load."""
        path = checkpoint.path
        if checkpoint.layout.same_sharding(self.layout):
            load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name)
            if load_path is None:
                raise CheckpointError(f"DeepSpeed found no checkpoint in {path}")
            state = torch.load(path / TRAINER_STATE.format(rank=self.rank), weights_only=False)
            stream.load_state_dict(state["stream"])
        else:
            from longvila.engine.reshard import load_resharded

            state = load_resharded(engine, stream, checkpoint, self.layout, self.rank, self.is_main)
        set_rng_state(state["rng"])
        self.last = path
        logger.info("resumed from %s at step %d", path, state["step"])
        return state["step"]
