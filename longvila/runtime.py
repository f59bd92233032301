"""Start-up shared by every stage and every evaluation: the process group, the embedded default, and the model's
parallel layout (attention dispatcher, sequence sharder, frame encoder).

Each step raises ``ValueError`` with one line; stages report it as a configuration error, evaluations as a bad
request, both through ``longvila/console.py``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.distributed as dist

from longvila.distributed.mesh import SequenceParallelConfig

logger = logging.getLogger("longvila")


def launched_world_size() -> int:
    """The world this process belongs to: the process group's, or what torchrun announced (1 without it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def start_processes(sp: SequenceParallelConfig):
    """Check that the launched world can hold ``sp``, then initialise (or reuse) the process group; a
    :class:`~longvila.engine.dist.DistEnv`."""
    from longvila.engine.dist import init_distributed

    sp.check_world(launched_world_size())
    return init_distributed()


def embedded_default(env) -> Path:
    """The tiny default model, built once by rank 0 while the other ranks wait."""
    from longvila.model.tiny import tiny_model_path

    if env.is_main:
        tiny_model_path()
    dist.barrier()
    return tiny_model_path()


def parallelize(model, sp: SequenceParallelConfig, attn_backend: str, device):
    """Resolve ``--attn_backend`` for ``device`` and install ``sp`` on ``model``; the run's ``ParallelDims``."""
    from longvila.distributed.block_attention import resolve_backend
    from longvila.distributed.integration import install_parallelism

    backend = resolve_backend(attn_backend, device)
    dims = install_parallelism(model, sp, backend)
    if sp.enabled:
        logger.info("sequence parallel: SP=%d (ring %d x ulysses %d, %s), DP=%d, attention backend %s",
                    sp.sp_size, sp.ring_size, sp.ulysses_size, sp.ring_type, dims.dp_size, backend.name)
    return dims
