"""LSE merge (Triton) against the float64 torch merge of longvila/distributed/lse.py, including -inf (empty)
partials, in-place accumulation, and ring attention on the triton backend using it."""

from __future__ import annotations

import pytest
import torch

from longvila.distributed.lse import merge_attention as lse_merge_reference
from longvila.kernels.lse_merge import lse_merge


def _partials(make, shape=(2, 3, 13), d=20, dtype=torch.float32):
    o1, o2 = make(*shape, d, dtype=dtype), make(*shape, d, dtype=dtype)
    l1, l2 = make(*shape, scale=3.0), make(*shape, scale=3.0)
    # Empty partials: only the first, only the second, and both (a query that has seen no key yet).
    l1[0, 0, 0] = float("-inf")
    l2[0, 0, 1] = float("-inf")
    l1[0, 0, 2] = l2[0, 0, 2] = float("-inf")
    return o1, l1, o2, l2


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference_and_is_neg_inf_safe(make, dtype):
    o1, l1, o2, l2 = _partials(make, dtype=dtype)
    out, lse = lse_merge(o1, l1, o2, l2)
    r_out, r_lse = lse_merge_reference(o1.double(), l1.double(), o2.double(), l2.double())
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(r_lse))
    assert torch.isneginf(lse[0, 0, 2]) and (out[0, 0, 2] == 0).all()
    # Only the second partial saw keys for this row.
    torch.testing.assert_close(out[0, 0, 0], o2[0, 0, 0].float(), msg=lambda m: f"{m} ({make})")
    torch.testing.assert_close(out.double(), r_out, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m} ({make})")
    finite = torch.isfinite(r_lse)
    torch.testing.assert_close(lse.double()[finite], r_lse[finite], rtol=1e-5, atol=1e-5, msg=lambda m: f"{m} ({make})")


@pytest.mark.triton
def test_merge_equals_attention_over_the_union(make):
    """Merging attention over two key halves gives attention over all keys (what ring attention relies on)."""
    q, k, v = make(1, 2, 9, 16), make(1, 2, 14, 16), make(1, 2, 14, 16)

    def attend(kk, vv):
        s = q @ kk.transpose(-1, -2)
        return torch.softmax(s, -1) @ vv, torch.logsumexp(s, -1)

    o1, l1 = attend(k[:, :, :5], v[:, :, :5])
    o2, l2 = attend(k[:, :, 5:], v[:, :, 5:])
    out, lse = lse_merge(o1, l1, o2, l2)
    full_o, full_l = attend(k, v)
    torch.testing.assert_close(out, full_o, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m} ({make})")
    torch.testing.assert_close(lse, full_l, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m} ({make})")


@pytest.mark.triton
def test_in_place_accumulation(make):
    o1, l1, o2, l2 = _partials(make)
    expect = lse_merge_reference(o1, l1, o2, l2)
    acc_o, acc_l = o1.clone(), l1.clone()
    out, lse = lse_merge(acc_o, acc_l, o2, l2, out=acc_o, out_lse=acc_l)
    assert out.data_ptr() == acc_o.data_ptr() and lse.data_ptr() == acc_l.data_ptr()
    torch.testing.assert_close(acc_o, expect[0], rtol=1e-5, atol=1e-5, msg=lambda m: f"{m} ({make})")
    assert torch.equal(torch.isneginf(acc_l), torch.isneginf(expect[1]))


def test_rejects_mismatched_shapes(make):
    with pytest.raises(ValueError, match="leading dims"):
        lse_merge(make(2, 4, 8), make(2, 5), make(2, 4, 8), make(2, 5))
    with pytest.raises(ValueError, match="differ"):
        lse_merge(make(2, 4, 8), make(2, 4), make(2, 4, 9), make(2, 4))
