"""Shared pieces of the multi-rank attention tests: an independent reference, data, and the SP-vs-full check."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .world import get_mesh


def reference_attention(q, k, v, *, scale, causal, segment_ids=None):
    """Plain autograd softmax attention on the full sequence, (B, H, L, D); written independently of the package."""
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)
    v = v.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    length = q.shape[2]
    allowed = torch.ones(length, length, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def packed_positions(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Position ids of packed documents (restarting at 0), including a 1-token document, per batch row."""
    rows = []
    for _ in range(batch):
        lengths, left = [], length
        while left > 0:
            n = int(torch.randint(1, max(2, length // 3), (1,), generator=gen))
            n = min(n, left)
            lengths.append(n)
            left -= n
        if 1 not in lengths and len(lengths) > 1:
            lengths[-1] -= 1
            lengths.append(1)
        rows.append(torch.cat([torch.arange(n) for n in lengths]))
    return torch.stack(rows)


@dataclass(frozen=True)
class Case:
    hq: int = 4
    hkv: int = 4
    length: int = 30
    causal: bool = True
    packed: bool = False
    dtype: torch.dtype = torch.float64
    backend: str = "torch"
    batch: int = 2
    dim: int = 16

    @property
    def tol(self) -> float:
        return 1e-9 if self.dtype == torch.float64 else 2e-5


CASES = (
    Case(hq=4, hkv=4, length=30),  # MHA, causal, odd length -> padding
    Case(hq=4, hkv=2, length=37, packed=True),  # GQA, packed documents across shard boundaries
    Case(hq=4, hkv=1, length=32, packed=True, backend="math"),  # kv heads < ulysses degree -> replication
    Case(hq=4, hkv=2, length=30, causal=False, packed=True),  # non-causal: padding must stay out via segments
    Case(hq=4, hkv=2, length=33, dtype=torch.float32),  # fp32 through the CPU flash op
)


def check_case(cfg, case: Case, seed: int) -> None:
    """Run sequence_parallel_attention on this rank's shard and compare out/dq/dk/dv with the full reference."""
    from longvila.distributed.attention import sequence_parallel_attention
    from longvila.distributed.sharding import gather_sequence, shard_sequence

    groups = get_mesh(cfg)
    gen = torch.Generator().manual_seed(seed * 100 + groups.dp_rank)  # DP groups see different data
    b, length, d = case.batch, case.length, case.dim
    q = torch.randn(b, length, case.hq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, length, case.hkv, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, length, case.hkv, d, generator=gen, dtype=torch.float64)
    dout = torch.randn(b, length, case.hq, d, generator=gen, dtype=torch.float64)
    pos = packed_positions(b, length, gen) if case.packed else torch.arange(length).expand(b, length)
    scale = d ** -0.5

    seg_full = torch.cumsum((pos == 0).long(), dim=-1)
    qr, kr, vr = (t.transpose(1, 2).clone().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qr, kr, vr, scale=scale, causal=case.causal,
                              segment_ids=seg_full if case.packed or not case.causal else None)
    ref.transpose(1, 2).backward(dout)

    # Constant, non-zero padding so a leak of padding into real tokens would change real outputs or grads.
    shards = shard_sequence({"q": q, "k": k, "v": v, "dout": dout, "position_ids": pos}, cfg, groups,
                            pad_values={"q": 0.5, "k": 0.5, "v": 0.5, "dout": 1.0})
    ql, kl, vl = (shards[n].transpose(1, 2).to(case.dtype).contiguous().requires_grad_() for n in ("q", "k", "v"))
    out = sequence_parallel_attention(ql, kl, vl, scale=scale, segment_ids=shards["segment_ids"], cfg=cfg,
                                      groups=groups, backend=case.backend, causal=case.causal)
    assert out.shape == (b, ql.shape[2], case.hq, d), out.shape
    assert out.dtype == case.dtype
    out.backward(shards["dout"].to(case.dtype))

    def full(t):
        return gather_sequence(t.detach().to(torch.float64), cfg, groups, dim=1)[:, :length]

    got = {"out": full(out), "dq": full(ql.grad.transpose(1, 2)), "dk": full(kl.grad.transpose(1, 2)),
           "dv": full(vl.grad.transpose(1, 2))}
    want = {"out": ref.detach().transpose(1, 2), "dq": qr.grad.transpose(1, 2), "dk": kr.grad.transpose(1, 2),
            "dv": vr.grad.transpose(1, 2)}
    for name in got:
        err = (got[name] - want[name]).abs().max().item()
        assert err < case.tol, f"{cfg} {case}: {name} max error {err:.3e}"


def check_all_cases(rank: int, world: int, cfg, seed: int = 0, cases=CASES) -> int:
    for i, case in enumerate(cases):
        check_case(cfg, case, seed + i)
    return len(cases)


def block_inputs(hq=4, hkv=2, s=24, d=8, dtype=torch.float64, seed=0):
    """Random fp64-made (q, k, v) with GQA and packed-document segment ids for block-backend tests."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, s, d, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(2, hkv, s, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(2, hkv, s, d, generator=g, dtype=torch.float64).to(dtype)
    seg = torch.cumsum((packed_positions(2, s, g) == 0).long(), dim=-1)
    return q, k, v, seg
