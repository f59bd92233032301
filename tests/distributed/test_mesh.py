"""SequenceParallelConfig validation, head checks, and the DP x ring x ulysses layout (pure and on real ranks)."""

import pytest
import torch.distributed as dist

from longvila.distributed.mesh import SequenceParallelConfig, build_mesh, check_heads, mesh_ranks

from .world import get_mesh


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(sp_size=4, ring_size=3), "--seq_parallel_size 4 is not divisible by --seq_parallel_ring_size 3"),
        (dict(sp_size=0), "seq_parallel_size must be a positive integer, got 0"),
        (dict(sp_size=2, ring_size=0), "seq_parallel_ring_size must be a positive integer, got 0"),
        (dict(sp_size=4, ring_type="spiral"), "--seq_parallel_ring_type must be one of zigzag_ring, ring, got 'spiral'"),
    ],
)
def test_bad_config_is_a_one_line_error(kwargs, fragment):
    with pytest.raises(ValueError) as exc:
        SequenceParallelConfig(**kwargs)
    assert fragment in _one_line(exc)


def test_world_not_divisible_by_sp():
    with pytest.raises(ValueError) as exc:
        SequenceParallelConfig(4, 2).check_world(6)
    assert "world size 6 is not divisible by --seq_parallel_size 4" in _one_line(exc)
    assert SequenceParallelConfig(4, 2).check_world(8) == 2


def test_derived_sizes():
    cfg = SequenceParallelConfig(8, 2, "ring")
    assert (cfg.ulysses_size, cfg.num_pieces, cfg.pad_multiple, cfg.zigzag) == (4, 1, 16, False)
    assert SequenceParallelConfig(4).num_pieces == 2
    assert SequenceParallelConfig(1).pad_multiple == 1 and not SequenceParallelConfig(1).enabled


def test_check_heads():
    assert check_heads(28, 4, 4) == 1  # divisible
    assert check_heads(8, 2, 4) == 2  # kv heads replicated 2x
    assert check_heads(4, 1, 4) == 4
    with pytest.raises(ValueError) as exc:
        check_heads(28, 4, 14)  # Qwen2-7B under pure Ulysses SP=14: q splits, kv neither divides nor is divided
    assert "num kv heads 4" in _one_line(exc) and "14" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        check_heads(6, 2, 4)
    assert "num q heads 6 is not divisible by the ulysses degree 4" in _one_line(exc)
    with pytest.raises(ValueError):
        check_heads(6, 4, 2)  # not GQA-compatible


def test_mesh_layout_ulysses_contiguous_ring_strided():
    groups = mesh_ranks(SequenceParallelConfig(4, 2), world_size=8)
    assert groups["ulysses"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert groups["ring"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups["sp"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert groups["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    for kind, lists in groups.items():  # every rank in exactly one group of each kind
        assert sorted(r for ranks in lists for r in ranks) == list(range(8)), kind


def test_single_process_mesh_without_dist():
    if dist.is_initialized():
        pytest.skip("default process group already initialised in this process")
    groups = build_mesh(SequenceParallelConfig(1))
    assert (groups.world_size, groups.sp_rank, groups.dp_size) == (1, 0, 1)
    with pytest.raises(ValueError):
        build_mesh(SequenceParallelConfig(2))


def _mesh_on_ranks(rank, world, cfg):
    g = get_mesh(cfg)
    sizes = {name: dist.get_world_size(getattr(g, f"{name}_group")) for name in ("dp", "sp", "ring", "ulysses")}
    check = {name: dist.get_process_group_ranks(getattr(g, f"{name}_group")) for name in sizes}
    return sizes, check, (g.dp_rank, g.sp_rank, g.ring_rank, g.ulysses_rank), (g.dp_ranks, g.sp_ranks,
                                                                             g.ring_ranks, g.ulysses_ranks)


def test_build_mesh_on_real_ranks(world4):
    cfg = SequenceParallelConfig(2, 2)  # SP 2 as a pure ring, DP 2
    res = world4.run(_mesh_on_ranks, cfg)
    for rank, (sizes, check, coords, ranks) in enumerate(res):
        assert sizes == {"dp": 2, "sp": 2, "ring": 2, "ulysses": 1}
        assert check["sp"] == [rank - rank % 2, rank - rank % 2 + 1]
        assert check["dp"] == [rank % 2, rank % 2 + 2]
        assert coords == (rank // 2, rank % 2, rank % 2, 0)
        assert list(ranks) == [check["dp"], check["sp"], check["ring"], check["ulysses"]]
    res = world4.run(_mesh_on_ranks, SequenceParallelConfig(4, 2))
    for rank, (sizes, check, coords, _) in enumerate(res):
        assert check["ulysses"] == [rank - rank % 2, rank - rank % 2 + 1]
        assert check["ring"] == [rank % 2, rank % 2 + 2]
        assert coords == (0, rank, rank // 2, rank % 2)


def test_from_args_reads_vila_flag_names():
    class Args:
        seq_parallel_size = 4
        seq_parallel_ring_size = 2
        seq_parallel_ring_type = "ring"

    assert SequenceParallelConfig.from_args(Args()) == SequenceParallelConfig(4, 2, "ring")
    assert SequenceParallelConfig.from_args(object()) == SequenceParallelConfig(1)


def test_parallel_dims_names_the_batch_and_the_count_group():
    """SP ranks of one group read the same batch; with SP 1 every rank reads its own and counts over the world."""
    from longvila.distributed.mesh import ParallelDims

    dims = ParallelDims(world_size=8, rank=5, sp=SequenceParallelConfig(sp_size=4, ring_size=2))
    assert (dims.dp_size, dims.dp_rank, dims.sp_rank) == (2, 1, 1)
    assert dims.batch_shard == (1, 2)
    assert ParallelDims(world_size=8, rank=4, sp=SequenceParallelConfig(4)).batch_shard == dims.batch_shard
    plain = ParallelDims(world_size=3, rank=2, sp=SequenceParallelConfig())
    assert plain.batch_shard == (2, 3) and plain.count_group is None and plain.sp_rank == 0
