"""RoPE (Triton) against HF's apply_rotary_pos_emb in float64: packed positions, GQA, both layouts, grads."""

from __future__ import annotations

import pytest
import torch

from longvila.kernels.rope import (
    apply_rope,
    apply_rope_cos_sin,
    apply_rope_reference,
    apply_rotary_pos_emb,
    rope_cos_sin,
    rope_inv_freq,
)


def _packed_positions(b, s, make):
    """Positions that restart at 0 at random document starts (packed samples) and a shifted global range."""
    pos = torch.empty(b, s, dtype=torch.long)
    for i in range(b):
        starts = sorted({0, *make.randint(1, s, (3,)).tolist()}) if s > 1 else [0]
        for lo, hi in zip(starts, starts[1:] + [s]):
            pos[i, lo:hi] = torch.arange(hi - lo)
    pos[-1] += 1000  # a shard of a long sequence: global positions far from 0
    return pos.to(make.device)


@pytest.mark.triton
@pytest.mark.parametrize("b,hq,hk,s,d", [(1, 1, 1, 1, 16), (2, 4, 2, 9, 16), (1, 3, 1, 17, 80), (2, 2, 2, 5, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_and_grads_match_hf_in_float64(make, b, hq, hk, s, d, dtype):
    theta = 1_000_000.0
    q = make(b, hq, s, d, dtype=dtype).requires_grad_()
    k = make(b, hk, s, d, dtype=dtype).requires_grad_()
    pos = _packed_positions(b, s, make)
    qo, ko = apply_rope(q, k, pos, theta)
    gq, gk = make(b, hq, s, d, dtype=dtype), make(b, hk, s, d, dtype=dtype)
    torch.autograd.backward([qo, ko], [gq, gk])

    # HF formula with cos/sin from inv_freq = 1/theta^(2i/d), in float64 (same fp32 angles as HF computes).
    cos, sin = rope_cos_sin(pos, d, theta)
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    rq, rk = apply_rope_reference(q64, k64, cos.double(), sin.double())
    torch.autograd.backward([rq, rk], [gq.double(), gk.double()])
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert qo.dtype == dtype and ko.shape == k.shape
    for name, got, want in (("q", qo, rq), ("k", ko, rk), ("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m} ({make})")


def test_cos_sin_follow_hf_inv_freq_schedule(device):
    pos = torch.tensor([[0, 1, 2, 0, 1]], device=device)
    cos, sin = rope_cos_sin(pos, 8, 10000.0)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float) / 8))
    assert torch.equal(rope_inv_freq(8, 10000.0), inv)
    torch.testing.assert_close(cos[0, 4].cpu(), torch.cos(inv))
    torch.testing.assert_close(sin[0, 2].cpu(), torch.sin(2 * inv))
    assert torch.equal(cos[0, 0], cos[0, 3])  # packed documents restart their positions


@pytest.mark.triton
def test_matches_transformers_qwen2_rotary(make):
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2.configuration_qwen2 import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb as hf_apply

    config = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=5e6)
    rotary = Qwen2RotaryEmbedding(config).to(make.device)
    q, k = make(2, 4, 11, 16), make(2, 2, 11, 16)
    pos = _packed_positions(2, 11, make)
    cos, sin = rotary(q, pos)
    want = hf_apply(q, k, cos, sin)
    theta = config.rope_parameters["rope_theta"]
    for got in (apply_rope(q, k, pos, theta), apply_rotary_pos_emb(q, k, cos, sin)):
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    # (B, S, H, D) layout, as HF's unsqueeze_dim=2
    got = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin, unsqueeze_dim=2)
    torch.testing.assert_close(got[0].transpose(1, 2), want[0], rtol=1e-5, atol=1e-5)
    del transformers


@pytest.mark.triton
def test_only_one_output_used_still_backpropagates(make):
    q, k = make(1, 2, 6, 16).requires_grad_(), make(1, 1, 6, 16).requires_grad_()
    cos, sin = rope_cos_sin(torch.arange(6, device=make.device)[None], 16, 10000.0)
    qo, _ = apply_rope_cos_sin(q, k, cos, sin)
    qo.sum().backward()
    assert k.grad is None or torch.count_nonzero(k.grad) == 0
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_rejects_bad_shapes(make):
    with pytest.raises(ValueError, match="even"):
        rope_inv_freq(15, 10000.0)
    cos, sin = rope_cos_sin(torch.zeros(1, 4, dtype=torch.long, device=make.device), 16, 10000.0)
    with pytest.raises(ValueError, match="cos/sin"):
        apply_rope_cos_sin(make(1, 2, 5, 16), make(1, 2, 5, 16), cos, sin)
