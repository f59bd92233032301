"""Chunked linear + cross-entropy against the naive full-logits reference in float64."""

from __future__ import annotations

import pytest
import torch

from longvila.kernels.fused_linear_ce import (
    FusedLinearCrossEntropyFunction,
    cross_entropy_sum,
    fused_linear_cross_entropy,
)
from longvila.model.loss import cross_entropy_sum as reference_loss


def _labels(make, shape, vocab, ignore_frac=0.3):
    labels = make.randint(0, vocab, shape)
    labels[torch.rand(shape, generator=make.gen).to(labels.device) < ignore_frac] = -100
    return labels


@pytest.mark.parametrize("shape,hidden,vocab,chunk", [((2, 19), 24, 101, 8), ((37,), 16, 67, None), ((1, 1), 16, 5, 1)])
@pytest.mark.parametrize("use_triton", [pytest.param(True, marks=pytest.mark.triton), False])
def test_loss_count_and_grads_match_float64(make, shape, hidden, vocab, chunk, use_triton):
    h = make(*shape, hidden).requires_grad_()
    w = make(vocab, hidden, scale=0.5).requires_grad_()
    labels = _labels(make, shape, vocab)
    loss, count = fused_linear_cross_entropy(h, w, labels, chunk_size=chunk, use_triton=use_triton)
    (loss * 0.5).backward()  # a non-unit upstream gradient must scale the stored gradients
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref, ref_count = reference_loss(h64, w64, labels)
    (ref * 0.5).backward()
    assert loss.dtype == torch.float32 and count.dtype == torch.int64 and int(count) == int(ref_count)
    tol = 1e-5 * max(1.0, ref.abs().item())
    assert abs(loss.item() - ref.item()) <= tol, f"{loss.item()} vs {ref.item()} ({make})"
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m} ({make})")
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m} ({make})")


@pytest.mark.triton
def test_fp16_inputs(make):
    h = make(3, 11, 32, dtype=torch.float16).requires_grad_()
    w = make(50, 32, dtype=torch.float16, scale=0.3).requires_grad_()
    labels = _labels(make, (3, 11), 50)
    loss, _ = fused_linear_cross_entropy(h, w, labels, chunk_size=16)
    loss.backward()
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref, _ = reference_loss(h64, w64, labels)
    ref.backward()
    assert h.grad.dtype == torch.float16 and w.grad.dtype == torch.float16
    assert abs(loss.item() - ref.item()) <= 2e-3 * max(1.0, ref.item())
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-2, atol=2e-3, msg=lambda m: f"{m} ({make})")
    # The weight gradient sums 33 tokens' fp16 logits-gradients (unit roundoff 4.9e-4): over 3,400 seeds the worst
    # element was 2.4e-3 beyond the relative term, so 2e-3 failed about one run in a thousand.
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-2, atol=4e-3, msg=lambda m: f"{m} ({make})")


def test_all_ignored_gives_zero_not_nan(make):
    h = make(2, 6, 16).requires_grad_()
    w = make(30, 16).requires_grad_()
    labels = torch.full((2, 6), -100, device=make.device)
    loss, count = cross_entropy_sum(h, w, labels)
    loss.backward()
    assert loss.item() == 0.0 and int(count) == 0
    assert torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0


@pytest.mark.triton
def test_frozen_weight_and_no_grad(make):
    h = make(9, 16).requires_grad_()
    w = make(21, 16)  # frozen lm_head (e.g. projector-only alignment stage)
    labels = _labels(make, (9,), 21)
    loss, _ = cross_entropy_sum(h, w, labels)
    loss.backward()
    assert w.grad is None and h.grad is not None
    with torch.no_grad():
        value, count = cross_entropy_sum(h, w, labels)
    ref, ref_count = reference_loss(h.detach(), w, labels)
    torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-5)
    assert int(count) == int(ref_count)


@pytest.mark.triton
def test_only_supervised_rows_are_computed(make, monkeypatch):
    """Rows labelled -100 (prompt, media tokens) never reach a GEMM: the chunk count follows the valid rows."""
    import longvila.kernels.fused_linear_ce as ce

    calls = []
    original = ce._mm_fp32
    monkeypatch.setattr(ce, "_mm_fp32", lambda a, b: calls.append(a.shape) or original(a, b))
    h, w = make(100, 16), make(40, 16)
    labels = torch.full((100,), -100, device=make.device)
    labels[[3, 50, 99]] = torch.tensor([1, 2, 3], device=make.device)
    FusedLinearCrossEntropyFunction.apply(h, w, labels, -100, 2, None)
    assert [tuple(c) for c in calls] == [(2, 16), (1, 16)]


def test_rejects_bad_labels_and_shapes(make):
    with pytest.raises(ValueError, match="labels must be in"):
        cross_entropy_sum(make(4, 8), make(10, 8), torch.tensor([1, 2, 10, -100], device=make.device))
    with pytest.raises(ValueError, match="match"):
        cross_entropy_sum(make(4, 8), make(10, 8), torch.tensor([1, 2, 3], device=make.device))
    with pytest.raises(ValueError, match="does not match weight"):
        cross_entropy_sum(make(4, 8), make(10, 9), torch.tensor([1, 2, 3, 4], device=make.device))


def test_out_of_memory_in_the_fp32_output_gemm_propagates(monkeypatch):
    """The fp32-output GEMM is chosen from the op schema; an OOM inside it must reach the caller, not fall back
    silently to the path that allocates a second, fp32 copy of every logits chunk (about 3 GB more at real
    shapes). A tensor that reports CUDA stands in for a GPU; the patched torch.mm runs out of memory there."""
    import longvila.kernels.fused_linear_ce as ce

    class ReportsCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    real_mm = torch.mm

    def mm(a, b, **kwargs):
        if "out_dtype" in kwargs:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", mm)
    a = torch.Tensor._make_subclass(ReportsCuda, torch.randn(4, 8, dtype=torch.bfloat16))
    b = torch.randn(8, 3, dtype=torch.bfloat16)
    assert ce.fp32_output_gemm(a) == ("dtype" in torch.ops.aten.mm.overloads())
    if not ce.fp32_output_gemm(a):
        pytest.skip("this torch has no out_dtype GEMM overloads")
    with pytest.raises(torch.OutOfMemoryError):
        ce._mm_fp32(a, b)
    assert not ce.fp32_output_gemm(torch.randn(4, 8, dtype=torch.bfloat16)), "CPU tensors have no such GEMM"
