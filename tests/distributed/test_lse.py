"""LSE merge: exactness against attention over the union of keys, and -inf / +inf empty rows."""

import math

import torch

from longvila.distributed.lse import merge_attention, merge_into, normalise_lse

INF = float("inf")


def _attend(scores, v):
    """Softmax attention of given scores; returns (out, lse) with 0 / -inf for rows without keys."""
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - torch.where(torch.isneginf(lse), 0.0, lse).unsqueeze(-1))
    return p @ v, lse


def test_merge_equals_attention_over_union():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) * 4
    v = torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64)
    o1, l1 = _attend(s[..., :3], v[..., :3, :])
    o2, l2 = _attend(s[..., 3:], v[..., 3:, :])
    out, lse = merge_attention(o1, l1, o2, l2)
    ref_o, ref_l = _attend(s, v)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_o, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, ref_l, atol=1e-12, rtol=0)


def test_merge_is_fp32_for_low_precision_inputs():
    o = torch.randn(1, 1, 2, 4).to(torch.bfloat16)
    lse = torch.randn(1, 1, 2).to(torch.bfloat16)
    out, l = merge_attention(o, lse, o, lse)
    assert out.dtype == torch.float32 and l.dtype == torch.float32
    torch.testing.assert_close(l, lse.float() + math.log(2))


def test_neg_inf_rows():
    o1 = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    l1 = torch.tensor([-INF, 0.5, -INF])
    o2 = torch.tensor([[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]])
    l2 = torch.tensor([0.3, -INF, -INF])
    out, lse = merge_attention(o1, l1, o2, l2)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(out[0], o2[0])  # only the second block saw keys
    torch.testing.assert_close(out[1], o1[1])  # only the first block saw keys
    torch.testing.assert_close(out[2], torch.zeros(2))  # nobody saw a key: zero output, -inf lse
    torch.testing.assert_close(lse[:2], torch.tensor([0.3, 0.5]))
    assert torch.isneginf(lse[2])


def test_pos_inf_marks_empty_rows_like_neg_inf():
    o1 = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    l1 = torch.tensor([INF, 1.0])  # FA2 marks an empty row with +inf
    o2 = torch.tensor([[5.0, 5.0], [6.0, 6.0]])
    l2 = torch.tensor([0.0, INF])
    out, lse = merge_attention(o1, l1, o2, l2)
    torch.testing.assert_close(out, torch.tensor([[5.0, 5.0], [2.0, 2.0]]))
    torch.testing.assert_close(lse, torch.tensor([0.0, 1.0]))
    out, lse = merge_attention(o1, torch.tensor([INF, INF]), o2, torch.tensor([-INF, INF]))
    assert torch.equal(out, torch.zeros(2, 2)) and torch.isneginf(lse).all()
    assert torch.isneginf(normalise_lse(torch.tensor([INF]))).all()


def test_empty_accumulator_and_row_slices():
    o = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    lse = torch.tensor([[INF, 0.0]])
    out, l = merge_attention(None, None, o, lse)
    assert torch.equal(out[0, 0], torch.zeros(2)) and torch.isneginf(l[0, 0]) and l[0, 1] == 0
    acc_o, acc_l = torch.zeros(1, 4, 2), torch.full((1, 4), -INF)
    acc_o, acc_l = merge_into(acc_o, acc_l, o, torch.tensor([[0.0, 0.0]]), rows=slice(2, 4))
    assert torch.isneginf(acc_l[0, :2]).all() and torch.equal(acc_o[0, 2:], o[0])
    # merging the same partial twice doubles the denominator but keeps the output
    acc_o, acc_l = merge_into(acc_o, acc_l, o, torch.tensor([[0.0, 0.0]]), rows=slice(2, 4))
    torch.testing.assert_close(acc_l[0, 2:], torch.full((2,), math.log(2)))
    torch.testing.assert_close(acc_o[0, 2:], o[0])
