"""MM-SP (LongVILA stage 5): the balanced split of a batch's frames over the SP group.

Each SP rank encodes a balanced 1/SP share of the batch's frames (:func:`split_frames`). Every rank encodes exactly
``ceil(N / SP)`` frames, so the tail ranks pad with dummy frames (zeros): all ranks then run the same vision
compute, and every rank's tower takes part in the backward (its gradients reach the ZeRO reduction). The dummy
features never reach the sequence. Training sends each real frame's features straight to the rank holding their
positions (``longvila/distributed/media_routing.py``). :func:`encode_frames_sharded` instead rebuilds every frame's
features on every rank (:func:`all_gather_with_grad`), which evaluation needs when every rank splices from one
cache of features (V-NIAH); it is also LongVILA's own MM-SP.

All ranks of an SP group must hold the same batch (same frames): SP ranks split one sample's sequence, they do not
read different samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class FrameSplit:
    """Frames ``[start, stop)`` are this rank's real frames; it encodes ``per_rank`` frames in total."""

    num_frames: int
    start: int
    stop: int
    per_rank: int

    @property
    def num_real(self) -> int:
        return self.stop - self.start

    @property
    def num_dummy(self) -> int:
        return self.per_rank - self.num_real


def split_frames(num_frames: int, sp_rank: int, sp_size: int) -> FrameSplit:
    """Balanced contiguous split: ``per_rank = ceil(N / SP)`` frames each, dummy frames fill the tail ranks."""
    if num_frames < 0 or sp_size < 1 or not 0 <= sp_rank < sp_size:
        raise ValueError(f"bad frame split: num_frames={num_frames} sp_rank={sp_rank} sp_size={sp_size}")
    per_rank = -(-num_frames // sp_size)
    start = min(sp_rank * per_rank, num_frames)
    stop = min(start + per_rank, num_frames)
    return FrameSplit(num_frames, start, stop, per_rank)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        world = dist.get_world_size(group)
        moved = x.movedim(dim, 0).contiguous()
        out = torch.empty((world * moved.shape[0], *moved.shape[1:]), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, moved, group=group)
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx, grad):
        # Each rank's loss is a partial sum of the global loss, and each one depends on every rank's features:
        # the gradient of this rank's slice is the SUM over ranks of their grads for that slice (reduce-scatter).
        world = dist.get_world_size(ctx.group)
        moved = grad.movedim(ctx.dim, 0).contiguous()
        out = torch.empty((moved.shape[0] // world, *moved.shape[1:]), dtype=grad.dtype, device=grad.device)
        dist.reduce_scatter_tensor(out, moved, op=dist.ReduceOp.SUM, group=ctx.group)
        return out.movedim(0, ctx.dim), None, None


def all_gather_with_grad(tensor: torch.Tensor, group=None, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (equal shapes) along ``dim``; backward = reduce-scatter (sum)."""
    if group is None and not dist.is_initialized():
        return tensor
    if dist.get_world_size(group) == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, group, dim)


def encode_frames_sharded(frames: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor], group,
                          sp_rank: int | None = None) -> torch.Tensor:
    """Encode (N, ...) frames with 1/SP of them per rank; return all N frames' features on every rank."""
    if group is None or dist.get_world_size(group) == 1:
        return encoder(frames)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group) if sp_rank is None else sp_rank
    n = frames.shape[0]
    if n == 0:
        return encoder(frames)  # every rank of the group sees the same batch, so none of them gathers
    split = split_frames(n, rank, world)
    local = frames[split.start:split.stop]
    if split.num_dummy:
        dummy = torch.zeros((split.num_dummy, *frames.shape[1:]), dtype=frames.dtype, device=frames.device)
        local = torch.cat([local, dummy], dim=0)
    features = encoder(local)
    return all_gather_with_grad(features, group, dim=0)[:n]
