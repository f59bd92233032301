"""The evaluation runtime: process group (one process or torchrun), the checkpoint, sequence parallelism.

:func:`load_runtime` starts like a stage (``longvila/runtime.py``), so
``--seq_parallel_size N`` shards every sequence (and, for video, the vision encoder's frames) over N ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from longvila.errors import EvalError

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
    layout: Any = None  # ParallelDims; None: single process without torch.distributed

    @property
    def is_main(self) -> bool:
        return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0

    @property
    def dp_rank(self) -> int:
        return self.layout.dp_rank if self.layout is not None else 0

    @property
    def dp_size(self) -> int:
        return self.layout.dp_size if self.layout is not None else 1

    @property
    def sp_size(self) -> int:
        return self.layout.sp.sp_size if self.layout is not None else 1


def check_model_dir(path) -> str:
    """``--model``: a checkpoint folder, or None for the embedded tiny default (built here if missing)."""
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
    from longvila.distributed.mesh import SequenceParallelConfig
    from longvila.model.checkpoint import load_vila
    from longvila.runtime import embedded_default, parallelize, start_processes

    if dtype is not None and dtype not in DTYPES:
        raise EvalError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        sp = SequenceParallelConfig(seq_parallel_size, seq_parallel_ring_size, seq_parallel_ring_type)
        path = check_model_dir(model_path) if model_path is not None else None
        env = start_processes(sp)
    except ValueError as error:
        raise EvalError(str(error)) from error
    path = path or str(embedded_default(env))
    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if env.device.type == "cuda" else torch.float32)
    model, tokenizer, image_processor = load_vila(path, dtype=torch_dtype)
    model.to(env.device).eval()
    try:
        layout = parallelize(model, sp, attn_backend, env.device)
    except ValueError as error:
        raise EvalError(str(error)) from error
    return EvalRuntime(model, tokenizer, image_processor, path, env.device, torch_dtype, layout)
