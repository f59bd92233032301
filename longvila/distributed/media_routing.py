"""MM-SP without a full-length tensor: each frame feature goes straight from the rank that encoded it to the rank
whose sequence shard holds its position.

LongVILA's MM-SP (and our earlier path) all-gathers every frame's features, builds the whole (S x H) embedded
sequence on every rank and only then takes the rank's shard: per rank that is O(S x H) twice over (forward and
backward), whatever the SP degree. Here the sequence layout is integer-only (``longvila/model/media_expansion.py``:
``layout_row``): every rank knows, for every position, whether it holds text or which feature row. From that and
the sharding rule (``longvila/distributed/sharding.py``) each rank computes the same :class:`RoutePlan` (which of
its feature rows go to which rank, and where received rows land) and one all-to-all-v moves the rows; its backward
is the reverse all-to-all-v. What a rank holds is its encoded frames' features and the features of its own
positions: both shrink as SP grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .mesh import SequenceParallelConfig
from .mmsp import FrameSplit, split_frames
from .sharding import sequence_indices


@dataclass(frozen=True)
class RoutePlan:
    """Where this rank's feature rows go and where the rows it receives land.

    ``send_rows``: rows of this rank's encoded features (``local_frame * tokens_per_frame + token``) in send order,
    grouped by destination SP rank (``send_counts``); received rows come grouped by source rank (``recv_counts``)
    and land at ``recv_positions``, flat indices ``b * local_len + i`` into this rank's (B, local_len) shard.
    ``frames`` says which of the batch's frames this rank encodes; ``group`` is the SP group (None: one process).
    """

    send_rows: torch.Tensor
    send_counts: list[int]
    recv_counts: list[int]
    recv_positions: torch.Tensor
    frames: FrameSplit
    group: object = None


def plan_local(feature_rows: torch.Tensor, num_frames: int) -> RoutePlan:
    """One process: every feature row is here and goes to the position that names it."""
    positions = (feature_rows.reshape(-1) >= 0).nonzero().squeeze(1)
    rows = feature_rows.reshape(-1)[positions]
    return RoutePlan(rows, [rows.numel()], [rows.numel()], positions, split_frames(num_frames, 0, 1))


def plan_routes(feature_rows: torch.Tensor, cfg: SequenceParallelConfig, sp_rank: int, tokens_per_frame: int,
                num_frames: int, group=None) -> RoutePlan:
    """The plan for ``sp_rank`` from the padded GLOBAL (B, L) feature rows (-1 on text positions).

    Frame ``f`` is encoded by SP rank ``f // frames_per_rank`` (the contiguous ``split_frames`` rule). Both sides
    order the rows of one (source, destination) pair by destination position, so sender and receiver agree without
    exchanging anything but the rows.
    """
    batch, length = feature_rows.shape
    sp, device = cfg.sp_size, feature_rows.device
    frames = split_frames(num_frames, sp_rank, sp)
    frames_per_rank = frames.per_rank
    local_len = length // sp
    owner = torch.empty(length, dtype=torch.long, device=device)
    local_index = torch.empty(length, dtype=torch.long, device=device)
    for rank in range(sp):
        held = sequence_indices(length, cfg, rank, device=device)
        owner[held] = rank
        local_index[held] = torch.arange(local_len, device=device)
    row, pos = (feature_rows >= 0).nonzero(as_tuple=True)
    feature = feature_rows[row, pos]
    destination = owner[pos]
    landing = row * local_len + local_index[pos]
    source = feature // tokens_per_frame // max(frames_per_rank, 1)
    span = batch * local_len

    mine = source == sp_rank
    order = torch.argsort(destination[mine] * span + landing[mine])
    send_rows = feature[mine][order] - sp_rank * frames_per_rank * tokens_per_frame
    here = destination == sp_rank
    order_in = torch.argsort(source[here] * span + landing[here])
    return RoutePlan(
        send_rows=send_rows,
        send_counts=torch.bincount(destination[mine], minlength=sp).tolist(),
        recv_counts=torch.bincount(source[here], minlength=sp).tolist(),
        recv_positions=landing[here][order_in],
        frames=frames,
        group=group,
    )


class _AllToAllRows(torch.autograd.Function):
    """Rows exchanged by all-to-all-v; the backward sends each row's gradient back to where the row came from."""

    @staticmethod
    def forward(ctx, rows, send_counts, recv_counts, group):
        ctx.counts, ctx.group = (send_counts, recv_counts), group
        return _exchange(rows, send_counts, recv_counts, group)

    @staticmethod
    def backward(ctx, grad):
        send_counts, recv_counts = ctx.counts
        return _exchange(grad, recv_counts, send_counts, ctx.group), None, None, None


def _exchange(rows: torch.Tensor, send_counts: list[int], recv_counts: list[int], group) -> torch.Tensor:
    out = rows.new_empty((sum(recv_counts), *rows.shape[1:]))
    dist.all_to_all_single(out, rows.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts,
                           group=group)
    return out


def route_features(features: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """(rows, H) features this rank encoded -> (len(plan.recv_positions), H) rows for this rank's positions."""
    outgoing = features.index_select(0, plan.send_rows.to(features.device))
    if plan.group is None or dist.get_world_size(plan.group) == 1:
        return outgoing
    return _AllToAllRows.apply(outgoing, plan.send_counts, plan.recv_counts, plan.group)
