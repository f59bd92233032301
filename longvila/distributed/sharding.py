"""Sequence sharding for SP: padding, zigzag / contiguous layouts, and the global bookkeeping that travels along.

Order of operations (the model owns the first step):

1. shift labels ONCE on the full sequence (``shifted[t] = labels[t+1]``, IGNORE across document starts);
2. :func:`shard_sequence`: pad to a multiple of 2 x SP (labels IGNORE_INDEX, position ids restarting at 0 so the
   padding is its own document), compute ``segment_ids = cumsum(position_ids == 0)`` on the GLOBAL sequence, then
   give every SP rank its slice of every tensor with the same index set.

Layouts, for SP = R (ring) x U (ulysses), global length L:

* ``zigzag_ring``: cut into 2R chunks; ring rank r holds chunks r and 2R-1-r (balanced causal work); inside a ring
  rank, ulysses rank u holds the u-th of U slices of BOTH chunks. After Ulysses' all-to-all a ring rank therefore
  sees exactly [chunk r, chunk 2R-1-r], the order zigzag ring attention expects.
* ``ring``: contiguous; SP rank s = r*U + u holds the s-th of SP equal pieces.

Segment ids must be computed before sharding: a local shard cannot tell whether its first token continues a
document that started on another rank, and zigzag shards are not even contiguous.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.distributed as dist

from longvila.constants import IGNORE_INDEX

from .document_split import segment_ids as document_ids
from .mesh import ProcessGroups, SequenceParallelConfig


def pad_to_multiple(tensor: torch.Tensor, multiple: int, dim: int = -1, value: float | int = 0) -> torch.Tensor:
    """Pad ``tensor`` at the end of ``dim`` with ``value`` up to the next multiple (never drops the tail)."""
    if multiple < 1:
        raise ValueError(f"pad multiple must be positive, got {multiple}")
    length = tensor.shape[dim]
    target = math.ceil(length / multiple) * multiple
    if target == length:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = target - length
    pad = torch.full(shape, value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, pad], dim=dim)


def shard_indices(seq_len: int, *, ring_rank: int, ring_size: int, ulysses_rank: int = 0, ulysses_size: int = 1,
                  zigzag: bool = True, device=None) -> torch.Tensor:
    """Global token positions held by SP rank (ring_rank, ulysses_rank), in local order (see module doc)."""
    sp = ring_size * ulysses_size
    pieces = 2 * sp if zigzag else sp
    if seq_len % pieces != 0:
        raise ValueError(f"sequence length {seq_len} is not a multiple of {pieces}; pad it first")
    if not (0 <= ring_rank < ring_size and 0 <= ulysses_rank < ulysses_size):
        raise ValueError(f"rank ({ring_rank}, {ulysses_rank}) outside mesh ({ring_size}, {ulysses_size})")
    sub = seq_len // pieces
    if zigzag:
        chunk = seq_len // (2 * ring_size)
        starts = [c * chunk + ulysses_rank * sub for c in (ring_rank, 2 * ring_size - 1 - ring_rank)]
    else:
        starts = [(ring_rank * ulysses_size + ulysses_rank) * sub]
    return torch.cat([torch.arange(s, s + sub, device=device) for s in starts])


def sequence_indices(seq_len: int, cfg: SequenceParallelConfig, sp_rank: int, device=None) -> torch.Tensor:
    """Global positions held by ``sp_rank`` (= ring_rank * U + ulysses_rank) under ``cfg``'s layout."""
    u = cfg.ulysses_size
    return shard_indices(seq_len, ring_rank=sp_rank // u, ring_size=cfg.ring_size, ulysses_rank=sp_rank % u,
                         ulysses_size=u, zigzag=cfg.zigzag, device=device)


def zigzag_indices(seq_len: int, sp_rank: int, sp_size: int, device=None) -> torch.Tensor:
    """Pure zigzag: of 2*sp_size chunks, rank r holds chunks r and 2*sp_size-1-r."""
    return shard_indices(seq_len, ring_rank=sp_rank, ring_size=sp_size, zigzag=True, device=device)


def zigzag_shard(tensor: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """This rank's zigzag shard of ``tensor`` along ``dim`` (length must be a multiple of 2*world)."""
    return tensor.index_select(dim, zigzag_indices(tensor.shape[dim], rank, world, device=tensor.device))


def contiguous_shard(tensor: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """Plain ``ring`` layout: the rank-th of ``world`` equal contiguous pieces."""
    if tensor.shape[dim] % world != 0:
        raise ValueError(f"sequence length {tensor.shape[dim]} is not a multiple of {world}; pad it first")
    return tensor.chunk(world, dim=dim)[rank]


def _unshard(chunks, index_sets, dim: int) -> torch.Tensor:
    cat = torch.cat(list(chunks), dim=dim)
    order = torch.cat(index_sets).to(cat.device)
    return cat.index_select(dim, torch.argsort(order))


def zigzag_unshard(chunks, dim: int) -> torch.Tensor:
    """Inverse of :func:`zigzag_shard`: ``chunks`` are the shards of ranks 0..world-1, in rank order."""
    world = len(chunks)
    total = sum(c.shape[dim] for c in chunks)
    return _unshard(chunks, [zigzag_indices(total, r, world) for r in range(world)], dim)


def unshard_sequence(chunks, cfg: SequenceParallelConfig, dim: int = 1) -> torch.Tensor:
    """Inverse of the sharding in :func:`shard_sequence`: ``chunks`` are the SP ranks' shards in SP-rank order."""
    if len(chunks) != cfg.sp_size:
        raise ValueError(f"expected {cfg.sp_size} shards, got {len(chunks)}")
    total = sum(c.shape[dim] for c in chunks)
    return _unshard(chunks, [sequence_indices(total, cfg, r) for r in range(cfg.sp_size)], dim)


def gather_sequence(local: torch.Tensor, cfg: SequenceParallelConfig, groups: ProcessGroups,
                    dim: int = 1) -> torch.Tensor:
    """All-gather SP shards and restore global order (no autograd; for eval/logits and tests)."""
    if not cfg.enabled:
        return local
    local = local.contiguous()
    parts = [torch.empty_like(local) for _ in range(cfg.sp_size)]
    dist.all_gather(parts, local, group=groups.sp_group)
    return unshard_sequence(parts, cfg, dim)


_DEFAULT_PADS = {"labels": IGNORE_INDEX, "attention_mask": 0}


def shard_sequence(
    tensors: Mapping[str, torch.Tensor],
    cfg: SequenceParallelConfig,
    groups: ProcessGroups | int,
    pad_values: Mapping[str, float | int] | None = None,
    seq_dim: int = 1,
) -> dict[str, torch.Tensor]:
    """Pad, compute global segment/position ids, and take this SP rank's shard of every tensor.

    ``tensors`` share the sequence dimension ``seq_dim`` (e.g. ``inputs_embeds`` (B,L,H), UNSHIFTED-then-shifted
    ``labels`` (B,L), ``position_ids`` (B,L), ``attention_mask`` (B,L)). Pads: ``labels`` -> IGNORE_INDEX,
    ``attention_mask`` -> 0, ``position_ids`` -> 0,1,2,... (a fresh padding document), everything else ->
    ``pad_values.get(name, 0)``. Without ``position_ids`` the sequence is one document with positions 0..L-1.

    The result holds every input key plus ``position_ids`` and ``segment_ids`` (B, L_local), all in the local
    order that :func:`longvila.distributed.attention.sequence_parallel_attention` expects. ``groups`` may be a
    :class:`ProcessGroups` or a plain SP rank (for single-process tests).
    """
    if not tensors:
        raise ValueError("shard_sequence needs at least one tensor")
    pad_values = dict(pad_values or {})
    lengths = {name: t.shape[seq_dim] for name, t in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"tensors disagree on the sequence length: {lengths}")
    seq_len = next(iter(lengths.values()))
    first = next(iter(tensors.values()))
    batch, device = first.shape[0], first.device
    multiple = cfg.pad_multiple
    padded_len = math.ceil(seq_len / multiple) * multiple
    n_pad = padded_len - seq_len

    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name in ("position_ids", "segment_ids"):
            continue
        value = pad_values.get(name, _DEFAULT_PADS.get(name, 0))
        out[name] = pad_to_multiple(t, multiple, dim=seq_dim, value=value)

    if "position_ids" in tensors:
        pos = tensors["position_ids"]
        if pos.dim() != 2:
            raise ValueError(f"position_ids must be (B, L), got {tuple(pos.shape)}")
    else:
        pos = torch.arange(seq_len, device=device).expand(batch, seq_len)
    pad_pos = torch.arange(n_pad, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], n_pad)
    out["position_ids"] = torch.cat([pos, pad_pos], dim=1)
    if "segment_ids" in tensors:
        seg = tensors["segment_ids"]
        fill = seg.max(dim=1, keepdim=True).values + 1
        out["segment_ids"] = torch.cat([seg, fill.expand(seg.shape[0], n_pad)], dim=1)
    else:
        out["segment_ids"] = document_ids(out["position_ids"])

    if not cfg.enabled:
        return out
    sp_rank = groups if isinstance(groups, int) else groups.sp_rank
    idx = sequence_indices(padded_len, cfg, sp_rank, device=device)
    sharded = {}
    for name, t in out.items():
        dim = 1 if name in ("position_ids", "segment_ids") else seq_dim
        sharded[name] = t.index_select(dim, idx.to(t.device))
    return sharded
