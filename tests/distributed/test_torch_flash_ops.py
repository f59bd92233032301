"""libtorch's flash-attention ops as the torch block backend calls them."""

import pytest
import torch

from longvila.distributed.torch_flash_ops import cuda_flash_backward, cuda_flash_forward


@pytest.mark.parametrize("hkv,s,d", [(4, 100, 64), (2, 37, 80), (1, 5, 128)])
def test_cuda_flash_op_binding_on_meta_tensors(hkv, s, d):
    """The CUDA route calls libtorch's flash op and its backward with arguments that bind, and gets the contract's
    shapes back (GQA grads at the kv head count, fp32 LSE (B, H, S)). Checked on ``meta`` tensors, which run the
    ops' shape functions without a GPU; the numbers are checked on CUDA by test_cuda_backends_match_cpu_reference."""
    q = torch.empty(2, 4, s, d, device="meta", dtype=torch.bfloat16)
    k = torch.empty(2, hkv, s, d, device="meta", dtype=torch.bfloat16)
    out, lse = cuda_flash_forward(q, k, k, causal=True, scale=0.1)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    dq, dk, dv = cuda_flash_backward(out, q, k, k, out, lse, causal=True, scale=0.1)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape
