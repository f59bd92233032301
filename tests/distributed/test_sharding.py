"""Padding, zigzag / 2D / contiguous layouts, and shard_sequence's global bookkeeping (single process)."""

import pytest
import torch

from longvila.constants import IGNORE_INDEX
from longvila.distributed.mesh import SequenceParallelConfig
from longvila.distributed.sharding import (
    contiguous_shard,
    pad_to_multiple,
    sequence_indices,
    shard_indices,
    shard_sequence,
    unshard_sequence,
    zigzag_indices,
    zigzag_shard,
    zigzag_unshard,
)

CONFIGS = [SequenceParallelConfig(sp, ring, kind) for sp, ring in ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4),
                                                                     (8, 2)) for kind in ("zigzag_ring", "ring")]


def test_pad_to_multiple_keeps_the_tail():
    x = torch.arange(10).reshape(2, 5)
    y = pad_to_multiple(x, 4, dim=1, value=-7)
    assert y.shape == (2, 8) and torch.equal(y[:, :5], x) and (y[:, 5:] == -7).all()
    assert pad_to_multiple(x, 5, dim=1) is x
    assert pad_to_multiple(x, 3, dim=0).shape == (3, 5)
    with pytest.raises(ValueError):
        pad_to_multiple(x, 0)


def test_zigzag_indices_hold_chunks_r_and_2R_minus_1_minus_r():
    assert zigzag_indices(16, 0, 4).tolist() == [0, 1, 14, 15]
    assert zigzag_indices(16, 1, 4).tolist() == [2, 3, 12, 13]
    assert zigzag_indices(16, 3, 4).tolist() == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="not a multiple of 8"):
        zigzag_indices(12, 0, 4)


def test_2d_layout_each_ulysses_rank_holds_a_slice_of_both_chunks():
    cfg = SequenceParallelConfig(4, 2)  # R=2, U=2: 4 chunks of 4
    got = [sequence_indices(16, cfg, r).tolist() for r in range(4)]
    assert got == [[0, 1, 12, 13], [2, 3, 14, 15], [4, 5, 8, 9], [6, 7, 10, 11]]
    # gathered over a ring rank's ulysses group, piece-major: exactly [chunk r, chunk 2R-1-r] in order
    ring0 = sorted(got[0] + got[1])
    assert ring0 == [0, 1, 2, 3, 12, 13, 14, 15]
    plain = SequenceParallelConfig(4, 2, "ring")
    assert [sequence_indices(8, plain, r).tolist() for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_layouts_partition_the_sequence_and_unshard_inverts(cfg):
    length = 4 * cfg.pad_multiple
    parts = [sequence_indices(length, cfg, r) for r in range(cfg.sp_size)]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(length))
    assert len({p.numel() for p in parts}) == 1
    x = torch.randn(2, length, 3)
    shards = [x.index_select(1, p) for p in parts]
    assert torch.equal(unshard_sequence(shards, cfg, dim=1), x)


def test_zigzag_and_contiguous_shard_roundtrip():
    x = torch.arange(24).reshape(1, 24)
    shards = [zigzag_shard(x, 1, r, 3) for r in range(3)]
    assert shards[0].tolist() == [[0, 1, 2, 3, 20, 21, 22, 23]]
    assert torch.equal(zigzag_unshard(shards, dim=1), x)
    assert contiguous_shard(x, 1, 2, 3).tolist() == [[16, 17, 18, 19, 20, 21, 22, 23]]
    with pytest.raises(ValueError):
        contiguous_shard(x, 1, 0, 5)
    with pytest.raises(ValueError):
        shard_indices(16, ring_rank=2, ring_size=2)


def test_shard_sequence_pads_and_shards_everything_alike():
    cfg = SequenceParallelConfig(2, 2)  # zigzag over 2 ranks: pad to a multiple of 4
    length = 13
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6]])
    ids = torch.arange(100, 100 + length)[None]
    labels = torch.arange(length)[None]
    embeds = torch.randn(1, length, 5)
    full_pos = torch.cat([pos, torch.tensor([[0, 1, 2]])], dim=1)
    full_seg = torch.tensor([[1] * 6 + [2] * 7 + [3] * 3])
    for rank in range(2):
        out = shard_sequence({"input_ids": ids, "labels": labels, "position_ids": pos, "inputs_embeds": embeds},
                             cfg, rank, pad_values={"input_ids": 7})
        idx = zigzag_indices(16, rank, 2)
        assert set(out) == {"input_ids", "labels", "position_ids", "inputs_embeds", "segment_ids"}
        padded_ids = torch.cat([ids, torch.full((1, 3), 7)], dim=1)
        padded_labels = torch.cat([labels, torch.full((1, 3), IGNORE_INDEX)], dim=1)
        assert torch.equal(out["input_ids"], padded_ids[:, idx])
        assert torch.equal(out["labels"], padded_labels[:, idx])
        assert torch.equal(out["position_ids"], full_pos[:, idx])  # global positions, padding restarts at 0
        assert torch.equal(out["segment_ids"], full_seg[:, idx])  # global document ids travel with the shard
        assert torch.equal(out["inputs_embeds"], torch.cat([embeds, torch.zeros(1, 3, 5)], dim=1)[:, idx])


def test_shard_sequence_defaults_and_errors():
    cfg = SequenceParallelConfig(2, 1)
    out = shard_sequence({"labels": torch.zeros(2, 5, dtype=torch.long)}, cfg, 1)
    assert out["position_ids"].shape == (2, 4)
    both = [shard_sequence({"labels": torch.zeros(2, 5, dtype=torch.long)}, cfg, r) for r in range(2)]
    pos = unshard_sequence([b["position_ids"] for b in both], cfg, dim=1)
    seg = unshard_sequence([b["segment_ids"] for b in both], cfg, dim=1)
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2] and seg[0].tolist() == [1] * 5 + [2] * 3
    given = shard_sequence({"labels": torch.zeros(1, 6), "segment_ids": torch.tensor([[0, 0, 5, 5, 5, 5]])},
                           SequenceParallelConfig(1), 0)
    assert given["segment_ids"].tolist() == [[0, 0, 5, 5, 5, 5]]
    with pytest.raises(ValueError, match="disagree"):
        shard_sequence({"a": torch.zeros(1, 4), "b": torch.zeros(1, 5)}, cfg, 0)
    padded = shard_sequence({"labels": torch.zeros(1, 3), "segment_ids": torch.tensor([[4, 4, 9]])},
                            SequenceParallelConfig(2, 2), 0)
    assert padded["segment_ids"].tolist() == [[4, 10]]  # padding gets a fresh id (max + 1)
