"""DeepSpeed-Ulysses attention: all-to-all from sequence shards to head shards and back.

Each of the U ranks of a ulysses group holds all heads of its sequence shard. One all-to-all per tensor turns
that into 1/U of the heads for the group's whole sequence, attention runs locally (or, in 2D attention, as ring
attention across ulysses groups), and the reverse all-to-all restores sequence shards. The backward of an
all-to-all is the reverse all-to-all, so one :class:`torch.autograd.Function` serves both directions.

Piece order. A rank's local sequence may consist of ``num_pieces`` equal, non-adjacent pieces (2 under the zigzag
layout: a slice of chunk r and a slice of chunk 2R-1-r). Gathering must place all ranks' slices of piece 0 first,
then piece 1, ... so the gathered sequence is [chunk r, chunk 2R-1-r] in global order, which is what zigzag ring
attention (and the causal mask of pure Ulysses) expects. Concatenating by source rank would interleave the
chunks and silently break causality.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .block_attention import block_attention
from .block_contract import expand_kv
from .mesh import check_heads


def _world(group) -> int:
    """Size of ``group`` (None = the default group when initialised, else a single process)."""
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _a2a(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)  # empty_like keeps permuted strides
    dist.all_to_all_single(out, x, group=group)
    return out


def seq_to_heads(x: torch.Tensor, group, num_pieces: int = 1) -> torch.Tensor:
    """(B, H, S_local, D) sequence shard -> (B, H/U, U*S_local, D) head shard (no autograd)."""
    u = _world(group)
    if u == 1:
        return x
    b, h, s, d = x.shape
    if h % u != 0:
        raise ValueError(f"{h} heads cannot be scattered over ulysses degree {u}")
    if s % num_pieces != 0:
        raise ValueError(f"local length {s} is not a multiple of num_pieces {num_pieces}")
    send = x.reshape(b, u, h // u, s, d).transpose(0, 1)  # (U dest, B, H/U, S, D)
    recv = _a2a(send, group)  # (U source, B, H/U, S, D)
    p = num_pieces
    recv = recv.reshape(u, b, h // u, p, s // p, d).permute(1, 2, 3, 0, 4, 5)  # (B, H/U, P, U, s, D)
    return recv.reshape(b, h // u, p * u * (s // p), d)


def heads_to_seq(x: torch.Tensor, group, num_pieces: int = 1) -> torch.Tensor:
    """(B, H/U, U*S_local, D) head shard -> (B, H, S_local, D) sequence shard (no autograd)."""
    u = _world(group)
    if u == 1:
        return x
    b, hu, s_full, d = x.shape
    p = num_pieces
    if s_full % (u * p) != 0:
        raise ValueError(f"gathered length {s_full} is not a multiple of ulysses degree x pieces {u * p}")
    sub = s_full // (u * p)
    send = x.reshape(b, hu, p, u, sub, d).permute(3, 0, 1, 2, 4, 5)  # (U dest, B, H/U, P, s, D)
    recv = _a2a(send, group)  # (U source = head group, B, H/U, P, s, D)
    return recv.transpose(0, 1).reshape(b, u * hu, p * sub, d)


class _AllToAll(torch.autograd.Function):
    """One all-to-all between the sequence and head layouts; its backward is the opposite all-to-all."""

    @staticmethod
    def forward(ctx, x, group, num_pieces, to_heads):
        ctx.group, ctx.num_pieces, ctx.to_heads = group, num_pieces, to_heads
        return (seq_to_heads if to_heads else heads_to_seq)(x, group, num_pieces)

    @staticmethod
    def backward(ctx, grad):
        opposite = heads_to_seq if ctx.to_heads else seq_to_heads
        return opposite(grad, ctx.group, ctx.num_pieces), None, None, None


def scatter_heads(x: torch.Tensor, group, num_pieces: int = 1) -> torch.Tensor:
    """Differentiable :func:`seq_to_heads` (backward: :func:`heads_to_seq`)."""
    return _AllToAll.apply(x, group, num_pieces, True)


def gather_heads(x: torch.Tensor, group, num_pieces: int = 1) -> torch.Tensor:
    """Differentiable :func:`heads_to_seq` (backward: :func:`seq_to_heads`)."""
    return _AllToAll.apply(x, group, num_pieces, False)


def gather_segment_ids(segment_ids: torch.Tensor, group, num_pieces: int = 1) -> torch.Tensor:
    """All-gather local (B, S_local) segment ids into the same piece-major order as :func:`seq_to_heads`."""
    u = _world(group)
    if u == 1:
        return segment_ids
    b, s = segment_ids.shape
    segment_ids = segment_ids.contiguous()
    parts = [torch.empty_like(segment_ids) for _ in range(u)]
    dist.all_gather(parts, segment_ids, group=group)
    stacked = torch.stack(parts, dim=0).reshape(u, b, num_pieces, s // num_pieces)
    return stacked.permute(1, 2, 0, 3).reshape(b, u * s)


def replicate_kv_heads(x: torch.Tensor, ulysses_size: int) -> torch.Tensor:
    """Repeat each kv head so there are ``ulysses_size`` of them (autograd sums the copies' grads back).

    With Hkv < U and U % Hkv == 0, ulysses rank u gets q heads [u*Hq/U, (u+1)*Hq/U), all of which use original
    kv head u // (U/Hkv) — exactly copy u of ``repeat_interleave(U/Hkv)``.
    """
    rep = ulysses_size // x.shape[1]
    return expand_kv(x, max(1, rep))


def ulysses_attention(q, k, v, *, scale: float, causal: bool = True, segment_ids_local=None, group=None,
                      inner_attention=None, num_pieces: int = 1, backend="torch"):
    """Ulysses sequence-parallel attention over ``group``; q/k/v are local (B, H, S_local, D) shards.

    ``inner_attention(q, k, v, segment_ids) -> out`` runs on the gathered (B, H/U, U*S_local, D) tensors; the
    default is causal/segment-masked block attention through ``backend``. ``num_pieces`` is 2 under the zigzag
    layout, 1 for contiguous shards. Returns (B, H, S_local, D).
    """
    u = _world(group)
    rep = check_heads(q.shape[1], k.shape[1], u)
    if rep > 1:
        k, v = replicate_kv_heads(k, u), replicate_kv_heads(v, u)
    seg = None if segment_ids_local is None else gather_segment_ids(segment_ids_local, group, num_pieces)
    qh, kh, vh = (scatter_heads(t, group, num_pieces) for t in (q, k, v))
    if inner_attention is None:
        out = block_attention(qh, kh, vh, causal=causal, scale=scale, q_segment_ids=seg, k_segment_ids=seg,
                              backend=backend)
    else:
        out = inner_attention(qh, kh, vh, seg)
    return gather_heads(out, group, num_pieces)
