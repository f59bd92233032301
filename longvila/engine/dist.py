"""Process-group start-up shared by single-process runs and torchrun.

DeepSpeed needs an initialised process group even with one process, so a plain ``python -m`` run gets the
environment a one-rank torchrun would have set. CPU runs use gloo, CUDA runs nccl.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port nobody listens on right now (for single-process rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_environment() -> dict[str, str]:
    """This process's environment minus the rendezvous variables :func:`init_distributed` may have set.

    A child launched from a process that initialised itself (a test, a notebook) would otherwise inherit
    MASTER_PORT and try to bind a port this process already holds.
    """
    return {key: value for key, value in os.environ.items() if key not in RENDEZVOUS_VARIABLES}


def init_distributed() -> DistEnv:
    """Initialise (or reuse) the default process group through DeepSpeed and describe this rank."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)
