"""Ring attention on 4 real gloo ranks: the direct API (fp64 exact, bf16 loose) and counted causal work balance."""

import pytest
import torch
import torch.distributed as dist

from longvila.distributed.block_contract import MathBackend
from longvila.distributed.ring import ring_attention, zigzag_ring_attention
from longvila.distributed.sharding import contiguous_shard, zigzag_shard, zigzag_unshard

from .sp_cases import packed_positions, reference_attention


class CountingBackend:
    """Math backend that counts the (query, key) pairs each call computes (causal blocks: the lower triangle)."""

    def __init__(self) -> None:
        self.inner = MathBackend()
        self.forward_pairs = 0
        self.backward_pairs = 0

    @staticmethod
    def _pairs(q, k, causal):
        sq, sk = q.shape[2], k.shape[2]
        return sq * (sq + 1) // 2 if causal else sq * sk

    def forward(self, q, k, v, **kw):
        self.forward_pairs += self._pairs(q, k, kw["causal"])
        return self.inner.forward(q, k, v, **kw)

    def backward(self, dout, q, k, v, out, lse, **kw):
        self.backward_pairs += self._pairs(q, k, kw["causal"])
        return self.inner.backward(dout, q, k, v, out, lse, **kw)


def _count_work(rank, world, zigzag, length):
    counter = CountingBackend()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 8, generator=g, dtype=torch.float64) for _ in range(3))
    shard = (lambda t: zigzag_shard(t, 2, rank, world)) if zigzag else (lambda t: contiguous_shard(t, 2, rank, world))
    ql, kl, vl = (shard(t).requires_grad_() for t in (q, k, v))
    out = ring_attention(ql, kl, vl, scale=0.3, causal=True, zigzag=zigzag, backend=counter)
    out.sum().backward()
    return counter.forward_pairs, counter.backward_pairs


def test_zigzag_balances_causal_work_and_plain_ring_does_not(world4):
    length = 64
    causal_pairs = length * (length + 1) // 2
    zig = world4.run(_count_work, True, length)
    fwd = [f for f, _ in zig]
    assert len(set(fwd)) == 1, f"zigzag per-rank work {fwd}"
    assert [b for _, b in zig] == fwd  # backward does the same blocks
    assert sum(fwd) == causal_pairs  # and computes no masked-out pair at all
    plain = [f for f, _ in world4.run(_count_work, False, length)]
    assert plain == sorted(plain) and plain[-1] > 3 * plain[0], f"plain ring per-rank work {plain}"
    assert sum(plain) == causal_pairs
    assert max(plain) > max(fwd)  # the slowest rank sets the step time


def _ring_direct(rank, world, dtype, zigzag, packed):
    g = torch.Generator().manual_seed(7)
    b, hq, hkv, length, d = 2, 4, 2, 40, 16
    q = torch.randn(b, hq, length, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(b, hkv, length, d, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(b, hq, length, d, generator=g, dtype=torch.float64)
    seg = torch.cumsum((packed_positions(b, length, g) == 0).long(), -1) if packed else None
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*leaves, scale=0.25, causal=True, segment_ids=seg)
    ref.backward(dout)

    def shard(t, dim=2):
        return zigzag_shard(t, dim, rank, world) if zigzag else contiguous_shard(t, dim, rank, world)

    ql, kl, vl = (shard(t).to(dtype).requires_grad_() for t in (q, k, v))
    fn = zigzag_ring_attention if zigzag else (lambda *a, **kw: ring_attention(*a, zigzag=False, **kw))
    out, lse = fn(ql, kl, vl, scale=0.25, causal=True, segment_ids=None if seg is None else shard(seg, 1),
                  return_lse=True)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    out.backward(shard(dout).to(dtype))
    tensors = [out.detach(), ql.grad, kl.grad, vl.grad]
    gathered = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        gathered.append(zigzag_unshard(parts, 2) if zigzag else torch.cat(parts, dim=2))
    want = [ref.detach(), leaves[0].grad, leaves[1].grad, leaves[2].grad]
    tol = 1e-9 if dtype == torch.float64 else 6e-2
    errs = [(a.double() - w).abs().max().item() for a, w in zip(gathered, want)]
    assert max(errs) < tol, f"dtype={dtype} zigzag={zigzag} packed={packed}: errors out/dq/dk/dv {errs}"
    return errs


@pytest.mark.parametrize("zigzag", [True, False])
def test_ring_attention_direct_api(world4, zigzag):
    world4.run(_ring_direct, torch.float64, zigzag, True)
    world4.run(_ring_direct, torch.bfloat16, zigzag, False)
