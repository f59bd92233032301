"""2D attention: the all-to-all inside a ring rank yields exactly the zigzag pair [chunk r, chunk 2R-1-r]."""

import torch

from longvila.distributed.mesh import SequenceParallelConfig
from longvila.distributed.sharding import sequence_indices
from longvila.distributed.ulysses import scatter_heads
from longvila.distributed.usp import usp_attention

from .sp_cases import Case, check_case
from .world import get_mesh


def _gathered_positions(rank, world, ring_type):
    cfg = SequenceParallelConfig(4, 2, ring_type)
    groups = get_mesh(cfg)
    length = 32
    pos = sequence_indices(length, cfg, groups.sp_rank).double()
    x = pos.reshape(1, 1, -1, 1).expand(1, 2, -1, 1).contiguous()  # 2 heads carry the positions
    y = scatter_heads(x, groups.ulysses_group, cfg.num_pieces)
    return y[0, 0, :, 0].long().tolist(), groups.ring_rank


def test_all_to_all_restores_zigzag_order_for_the_ring(world4):
    chunk = 32 // 4
    for got, r in world4.run(_gathered_positions, "zigzag_ring"):
        want = list(range(r * chunk, (r + 1) * chunk)) + list(range((3 - r) * chunk, (4 - r) * chunk))
        assert got == want
    for got, r in world4.run(_gathered_positions, "ring"):
        assert got == list(range(r * 16, (r + 1) * 16))


def _usp_gqa_kv_replicated(rank, world):
    # 2 kv heads over ulysses degree 2 (no replication) and 1 kv head (replicated 2x), fp32 via the CPU flash op.
    cfg = SequenceParallelConfig(4, 2)
    check_case(cfg, Case(hq=2, hkv=1, length=27, packed=True, dtype=torch.float32), seed=11)
    check_case(cfg, Case(hq=8, hkv=2, length=40, dim=8), seed=12)
    groups = get_mesh(cfg)
    q = torch.randn(1, 4, 8, 4, dtype=torch.float64)
    out = usp_attention(q, q[:, :2], q[:, :2], scale=0.5, ulysses_group=groups.ulysses_group,
                        ring_group=groups.ring_group)
    return tuple(out.shape)


def test_usp_direct_gqa(world4):
    assert world4.run(_usp_gqa_kv_replicated) == [(1, 4, 8, 4)] * 4
