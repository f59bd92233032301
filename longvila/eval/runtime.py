"""The evaluation runtime: process group (one process or torchrun), the checkpoint, sequence parallelism.

:func:`load_runtime` calls :func:`longvila.distributed.integration.install_parallelism`, so
``--seq_parallel_size N`` shards every sequence (and, for video, the vision encoder's frames) over N ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from longvila.eval.grid import EvalError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EvalRuntime:
    """A loaded model with parallelism installed, plus this rank's place in the data-parallel layout."""

    model: Any
    tokenizer: Any
    image_processor: Any
    model_path: str
    device: torch.device
    dtype: torch.dtype
    layout: Any = None  # DataParallelLayout; None: single process without torch.distributed

    @property
    def is_main(self) -> bool:
        return not _distributed() or torch.distributed.get_rank() == 0

    @property
    def dp_rank(self) -> int:
        return self.layout.rank if self.layout is not None else 0

    @property
    def dp_size(self) -> int:
        return self.layout.size if self.layout is not None else 1

    @property
    def sp_size(self) -> int:
        return self.layout.sp.sp_size if self.layout is not None else 1


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def check_model_dir(path) -> str:
    if path is None:
        from longvila.model.tiny import tiny_model_path

        return str(tiny_model_path())
    if not (Path(path) / "config.json").is_file():
        raise EvalError(f"--model {path} is not a checkpoint folder (no config.json)")
    return str(path)


def load_runtime(model_path: str | None, seq_parallel_size: int = 1, seq_parallel_ring_size: int = 1,
                 seq_parallel_ring_type: str = "zigzag_ring", attn_backend: str = "auto",
                 dtype: str | None = None) -> EvalRuntime:
    """Initialise torch.distributed (one process or torchrun), load the checkpoint, install SP.

    ``model_path=None`` is the embedded tiny default. ``dtype`` defaults to bfloat16 on CUDA, float32 on CPU.
    """
    from longvila.distributed.integration import install_parallelism
    from longvila.distributed.mesh import SequenceParallelConfig
    from longvila.engine.dist import init_distributed
    from longvila.kernels import resolve_attn_backend
    from longvila.model.checkpoint import load_vila

    if dtype is not None and dtype not in DTYPES:
        raise EvalError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        sp = SequenceParallelConfig(seq_parallel_size, seq_parallel_ring_size, seq_parallel_ring_type)
    except ValueError as error:
        raise EvalError(str(error)) from error
    if not _distributed() and "RANK" not in os.environ and sp.enabled:
        raise EvalError(f"--seq_parallel_size {sp.sp_size} needs {sp.sp_size} ranks: launch with "
                        f"torchrun --nproc_per_node {sp.sp_size} -m longvila.eval.<task> ...")
    if _distributed() or "RANK" in os.environ:
        world = torch.distributed.get_world_size() if _distributed() else int(os.environ.get("WORLD_SIZE", 1))
        if world % sp.sp_size:
            raise EvalError(f"world size {world} is not divisible by --seq_parallel_size {sp.sp_size}")
    path = check_model_dir(model_path) if model_path is not None else None
    env = init_distributed()
    if path is None:  # build the tiny default once, on rank 0
        if env.is_main:
            path = check_model_dir(None)
        torch.distributed.barrier()
        path = check_model_dir(None)
    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if env.device.type == "cuda" else torch.float32)
    try:
        backend = resolve_attn_backend(attn_backend, env.device)
    except ValueError as error:
        raise EvalError(str(error)) from error
    model, tokenizer, image_processor = load_vila(path, dtype=torch_dtype)
    model.to(env.device).eval()
    try:
        layout = install_parallelism(model, sp, backend)
    except ValueError as error:
        raise EvalError(str(error)) from error
    return EvalRuntime(model, tokenizer, image_processor, path, env.device, torch_dtype, layout)
