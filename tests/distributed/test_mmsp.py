"""MM-SP: balanced frame split, all-gather backward, and sharded frame encoding vs one process."""

import pytest
import torch
import torch.distributed as dist

from longvila.distributed.mesh import SequenceParallelConfig
from longvila.distributed.mmsp import all_gather_with_grad, encode_frames_sharded, split_frames
from longvila.distributed.sharding import shard_sequence

from .world import get_mesh


@pytest.mark.parametrize("sp", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [0, 1, 4, 5, 7, 13])
def test_split_frames_is_balanced_and_ordered(n, sp):
    splits = [split_frames(n, r, sp) for r in range(sp)]
    per = -(-n // sp)
    assert all(s.per_rank == per for s in splits)  # every rank encodes the same number of frames
    real = [i for s in splits for i in range(s.start, s.stop)]
    assert real == list(range(n))  # in order, nothing dropped or duplicated
    assert all(s.num_dummy >= 0 for s in splits) and sum(s.num_dummy for s in splits) == per * sp - n
    assert sum(s.num_dummy for s in splits) < sp or n == 0


def test_split_frames_rejects_bad_input():
    with pytest.raises(ValueError, match="sp_rank=4"):
        split_frames(3, 4, 4)


def _gather_backward(rank, world):
    x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    y = all_gather_with_grad(x, None, dim=0)
    assert torch.equal(y[:, 0], torch.tensor([1.0, 1, 2, 2, 3, 3, 4, 4], dtype=torch.float64))
    weights = torch.arange(8 * 3, dtype=torch.float64).reshape(8, 3) * (rank + 1)  # a different loss per rank
    (y * weights).sum().backward()
    total = sum(torch.arange(8 * 3, dtype=torch.float64).reshape(8, 3) * (r + 1) for r in range(world))
    assert torch.equal(x.grad, total[2 * rank:2 * rank + 2])  # SUM over ranks, then this rank's slice
    y2 = all_gather_with_grad(x.detach().T.contiguous().requires_grad_(), None, dim=1)
    assert y2.shape == (3, 8)
    return True


def test_all_gather_with_grad_backward_sums_over_ranks(world4):
    world4.run(_gather_backward)


def _full_loss(features, target, cfg, groups):
    """Tokens = the flattened frame features; loss = sum(<token, target>) over this rank's token shard."""
    seq = features.reshape(1, -1, features.shape[-1])
    if cfg is None:
        return (seq * target).sum()
    shards = shard_sequence({"embeds": seq, "target": target}, cfg, groups)
    return (shards["embeds"] * shards["target"]).sum()


def _mmsp_vs_single(rank, world, sp, ring, num_frames):
    cfg = SequenceParallelConfig(sp, ring)
    groups = get_mesh(cfg)
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(4, 6), torch.nn.Tanh()).double()
    calls = []

    def encode(frames):  # (N, 3, 2, 2) -> (N, 3, 6): 3 "patch tokens" per frame
        calls.append(frames.shape[0])
        return encoder(frames)

    g = torch.Generator().manual_seed(100 + groups.dp_rank)
    frames = torch.randn(num_frames, 3, 2, 2, generator=g, dtype=torch.float64)
    target = torch.randn(1, num_frames * 3, 6, generator=g, dtype=torch.float64)

    ref = torch.autograd.grad(_full_loss(encode(frames), target, None, None), list(encoder.parameters()))
    calls.clear()
    feats = encode_frames_sharded(frames, encode, groups.sp_group)
    assert calls == [-(-num_frames // sp)]  # one encoder call on a balanced share
    assert feats.shape == (num_frames, 3, 6)
    grads = torch.autograd.grad(_full_loss(feats, target, cfg, groups), list(encoder.parameters()))
    for grad, want in zip(grads, ref):
        dist.all_reduce(grad, group=groups.sp_group)  # what the DP x SP gradient reduction sums
        torch.testing.assert_close(grad, want, atol=1e-12, rtol=0)
    return True


def test_mmsp_encoder_grads_match_single_process(world4):
    world4.run(_mmsp_vs_single, 4, 1, 5)  # ranks 2-3 encode dummy frames
    world4.run(_mmsp_vs_single, 4, 2, 8)
    world4.run(_mmsp_vs_single, 2, 2, 3)  # 2 DP groups with different videos
