"""The flash_attn block backend's own code on a CPU stand-in of the package (flash-attn itself is CUDA-only)."""

import pytest
import torch

from longvila.distributed.block_contract import MathBackend
from longvila.distributed.flash_attn_backend import FlashAttnBackend

from . import flash_attn_standin
from .sp_cases import block_inputs


@pytest.mark.parametrize("version", ["2.6", "2.7"])
def test_flash_attn_backend_against_float64_on_a_cpu_standin(version, monkeypatch):
    """The flash_attn backend's own code, on a CPU stand-in of the package's internal API (flash-attn itself is
    CUDA-only): whole blocks, ring-style uneven key blocks, and packed documents, which must run per document
    (the math path is refused), in bf16 against the float64 math backend, backward against the given LSE."""
    flash_attn_standin.install(monkeypatch, version)
    monkeypatch.setattr(FlashAttnBackend, "device_type", "cpu")
    be = FlashAttnBackend()

    def refuse(*args, **kwargs):
        raise AssertionError("the flash_attn backend fell back to the O(S^2) math path")

    monkeypatch.setattr(be._math, "forward", refuse)
    monkeypatch.setattr(be._math, "backward", refuse)
    ref = MathBackend()
    q, k, v, seg = block_inputs(hkv=2, s=29, d=16, seed=5)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(6), dtype=q.dtype)
    for causal, packed, ks in ((True, False, slice(None)), (False, False, slice(7, 23)), (True, True, slice(None)),
                               (False, True, slice(7, 23))):
        q_seg, k_seg = (seg, seg[:, ks]) if packed else (None, None)
        kb, vb = k[:, :, ks], v[:, :, ks]
        want_out, want_lse = ref.forward(q, kb, vb, causal=causal, scale=0.3, q_segment_ids=q_seg,
                                         k_segment_ids=k_seg)
        lq, lk, lv, ld = (t.bfloat16() for t in (q, kb, vb, dout))
        out, lse = be.forward(lq, lk, lv, causal=causal, scale=0.3, q_segment_ids=q_seg, k_segment_ids=k_seg)
        assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32 and lse.shape == q.shape[:3]
        torch.testing.assert_close(out.double(), want_out, atol=3e-2, rtol=0)
        torch.testing.assert_close(lse.double(), want_lse, atol=3e-2, rtol=0)  # -inf rows must match exactly
        grads = be.backward(ld, lq, lk, lv, want_out.bfloat16(), want_lse.float(), causal=causal, scale=0.3,
                            q_segment_ids=q_seg, k_segment_ids=k_seg)
        wants = ref.backward(dout, q, kb, vb, want_out, want_lse, causal=causal, scale=0.3, q_segment_ids=q_seg,
                             k_segment_ids=k_seg)
        for got, want in zip(grads, wants):
            assert got.shape == want.shape and got.dtype == torch.bfloat16
            # Key gradients here reach |7|, where one bf16 step is 0.03: two bf16 epsilons relative, on top.
            torch.testing.assert_close(got.double(), want, atol=6e-2, rtol=1.6e-2)


def test_flash_attn_backend_refuses_what_the_package_cannot_take(monkeypatch):
    flash_attn_standin.install(monkeypatch, "2.7")
    be = FlashAttnBackend()
    q, k, v, seg = block_inputs(hkv=2, s=8, d=16)
    with pytest.raises(ValueError, match="fp16/bf16 CUDA"):  # CPU tensors, packed or not
        be.forward(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, scale=0.3, q_segment_ids=seg,
                   k_segment_ids=seg)
    monkeypatch.setattr(FlashAttnBackend, "device_type", "cpu")
    with pytest.raises(ValueError, match="fp16/bf16 CUDA"):
        be.forward(q.float(), k.float(), v.float(), causal=True, scale=0.3)
    q, k, v, _ = block_inputs(hkv=2, s=8, d=12, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of 8"):
        be.forward(q, k, v, causal=True, scale=0.3)
