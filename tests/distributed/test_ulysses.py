"""Ulysses all-to-all (values, piece order, autograd) and head checks on 4 real gloo ranks."""

import torch

from longvila.distributed.mesh import SequenceParallelConfig
from longvila.distributed.sharding import sequence_indices
from longvila.distributed.ulysses import gather_heads, gather_segment_ids, scatter_heads, ulysses_attention


def _a2a_against_full(rank, world, num_pieces):
    cfg = SequenceParallelConfig(world, 1, "zigzag_ring" if num_pieces == 2 else "ring")
    g = torch.Generator().manual_seed(3)
    b, h, length, d = 2, 8, 16, 3
    full = torch.randn(b, h, length, d, generator=g, dtype=torch.float64)
    weights = torch.randn(world, b, h // world, length, d, generator=g, dtype=torch.float64)
    idx = sequence_indices(length, cfg, rank)
    x = full[:, :, idx].clone().requires_grad_()
    y = scatter_heads(x, None, num_pieces)
    heads = slice(rank * h // world, (rank + 1) * h // world)
    assert torch.equal(y, full[:, heads]), "gathered sequence must be in global order for this rank's heads"
    (y * weights[rank]).sum().backward()
    # d/dx of sum_r <y_r, W_r>: W rearranged to (all heads, this rank's positions)
    assert torch.equal(x.grad, weights.permute(1, 0, 2, 3, 4).reshape(b, h, length, d)[:, :, idx])
    back = gather_heads(y.detach(), None, num_pieces)
    assert torch.equal(back, x.detach())
    seg = torch.arange(length).expand(b, length)[:, idx] * 10
    assert torch.equal(gather_segment_ids(seg.contiguous(), None, num_pieces), torch.arange(length).expand(b, -1) * 10)
    return True


def test_all_to_all_roundtrip_order_and_grad(world4):
    world4.run(_a2a_against_full, 1)
    world4.run(_a2a_against_full, 2)


def _bad_heads(rank, world):
    q = torch.zeros(1, 6, 4, 8)
    k = torch.zeros(1, 2, 4, 8)
    try:
        ulysses_attention(q, k, k, scale=1.0, group=None)
    except ValueError as exc:
        return str(exc)
    return None


def test_indivisible_heads_fail_on_every_rank_before_any_collective(world4):
    msgs = world4.run(_bad_heads)
    assert all(m is not None and "num q heads 6 is not divisible by the ulysses degree 4" in m for m in msgs)
    assert all("\n" not in m for m in msgs)
