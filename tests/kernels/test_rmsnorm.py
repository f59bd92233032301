"""RMSNorm (Triton) against HF Qwen2RMSNorm semantics in float64, plus the drop-in module."""

from __future__ import annotations

import pytest
import torch

from longvila.kernels.rmsnorm import FusedRMSNorm, fuse_rms_norms, rms_norm, rms_norm_reference


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(1, 1, 16), (3, 7, 48), (2, 5, 80), (37, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_and_grads_match_float64(make, shape, dtype):
    x = make(*shape, dtype=dtype, scale=2.0).requires_grad_()
    w = (1.0 + 0.3 * make(shape[-1], dtype=dtype)).requires_grad_()
    y = rms_norm(x, w, 1e-6)
    dy = make(*shape, dtype=dtype)
    y.backward(dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = rms_norm_reference(x64, w64, 1e-6)
    ref.backward(dy.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert y.dtype == dtype and x.grad.dtype == dtype and w.grad.dtype == dtype
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{m} ({make})")
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol, msg=lambda m: f"{m} ({make})")
    # The weight gradient sums over all rows; compare relative to its size.
    wtol = tol * max(1.0, w64.grad.abs().max().item())
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=tol, atol=wtol, msg=lambda m: f"{m} ({make})")


@pytest.mark.triton
def test_same_rounding_as_hf_in_half_precision(make):
    """HF rounds the normalised value to the input dtype before the weight multiply; so does the kernel.

    Rounding once instead would change about a quarter of the fp16 outputs by one ulp.
    """
    x = make(64, 64, dtype=torch.float16, scale=3.0)
    w = (1.0 + 0.5 * make(64)).to(torch.float16)
    same = (rms_norm(x, w, 1e-6) == rms_norm_reference(x, w, 1e-6)).float().mean().item()
    assert same > 0.98, f"only {same:.1%} of fp16 outputs equal HF's ({make})"
    mixed = rms_norm(x, w.float(), 1e-6)  # fp16 input with an fp32 weight gives fp32 output, as in HF
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, rms_norm_reference(x, w.float(), 1e-6), rtol=1e-3, atol=1e-3)  # 1 fp16 ulp


@pytest.mark.triton
def test_module_wraps_hf_norm_and_shares_its_weight(make):
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    hf = Qwen2RMSNorm(24, eps=1e-5).to(make.device)
    with torch.no_grad():
        hf.weight.copy_(1.0 + 0.1 * make(24))
    fused = FusedRMSNorm.from_module(hf)
    assert fused.weight is hf.weight and fused.variance_epsilon == 1e-5
    assert list(fused.state_dict()) == list(hf.state_dict())
    x = make(2, 5, 24)
    torch.testing.assert_close(fused(x), hf(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="not an RMSNorm"):
        FusedRMSNorm.from_module(torch.nn.ReLU())
    del transformers


@pytest.mark.triton
def test_fuse_rms_norms_swaps_every_norm_of_a_qwen2_model(make):
    pytest.importorskip("transformers")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(make.seed)
    model = Qwen2ForCausalLM(config).to(make.device)
    ids = make.randint(0, 64, (2, 9))
    before = model(input_ids=ids).logits
    keys = list(model.state_dict())
    assert fuse_rms_norms(model) == 2 * 2 + 1  # input/post-attention norms per layer, plus the final norm
    assert fuse_rms_norms(model) == 0
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)


def test_rejects_wrong_weight_size(make):
    with pytest.raises(ValueError, match="weight size"):
        rms_norm(make(2, 8), make(7), 1e-6)
