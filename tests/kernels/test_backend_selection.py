"""longvila.kernels package API: import safety, triton_available, resolve_attn_backend; interpreter check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import longvila.kernels as kernels


def test_interpreter_is_active_on_cpu():
    """Without CUDA the suite must really run the Triton kernels on CPU tensors through the interpreter."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present: kernels run compiled")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from longvila.kernels.lse_merge import _merge_launch

    o = torch.randn(3, 4)
    out, lse = _merge_launch(o, torch.zeros(3), o, torch.zeros(3))  # a Triton launch on CPU tensors
    torch.testing.assert_close(out, o)
    torch.testing.assert_close(lse, torch.full((3,), float(torch.log(torch.tensor(2.0)))))
    assert kernels.triton_available() and kernels.triton_available("cpu")


def test_everything_imports_on_cpu_without_the_interpreter():
    code = (
        "import torch, longvila.kernels as k\n"
        "import longvila.kernels.flash_attention, longvila.kernels.lse_merge, longvila.kernels.rmsnorm\n"
        "import longvila.kernels.rope, longvila.kernels.fused_linear_ce as ce\n"
        "assert k.triton_available('cpu') is False\n"
        "assert k.resolve_attn_backend('auto', 'cpu') == 'torch'\n"
        "h = torch.randn(5, 8, requires_grad=True); w = torch.randn(11, 8)\n"
        "loss, n = ce.cross_entropy_sum(h, w, torch.tensor([1, 2, -100, 3, 4]))\n"  # torch path of the same algorithm
        "loss.backward(); assert int(n) == 4\n"
        "from longvila.kernels.rmsnorm import FusedRMSNorm\n"
        "assert FusedRMSNorm(8)(torch.randn(2, 8)).shape == (2, 8)\n"  # falls back to HF's formula
        "try:\n"
        "    longvila.kernels.flash_attention.flash_attn_forward(*(torch.randn(1,1,4,16),)*3, causal=True, scale=1.)\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e)\n"
        "else:\n"
        "    raise AssertionError('launch on CPU without the interpreter should fail clearly')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_interpreter_works_when_triton_was_imported_first():
    """In a full ``pytest tests`` run transformers imports triton long before this directory's fixtures set
    TRITON_INTERPRET; every kernel must still run in the interpreter (they avoid triton's import-time-jitted
    library functions, and wrap their own kernels lazily)."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present: kernels run compiled")
    code = (
        "import os, sys, torch, transformers.models.qwen2.modeling_qwen2\n"
        "assert 'triton' in sys.modules\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from longvila.kernels import flash_attention as fa, fused_linear_ce as ce, lse_merge as lm\n"
        "from longvila.kernels import rmsnorm as rn, rope as rp\n"
        "q = torch.randn(1, 2, 19, 16)\n"
        "seg = torch.tensor([[0] * 7 + [1] * 12], dtype=torch.int32)\n"
        "out, lse = fa.flash_attn_forward(q, q, q, causal=True, scale=0.25, q_segment_ids=seg, k_segment_ids=seg)\n"
        "ref, _ = fa.attention_reference(q, q, q, causal=True, scale=0.25, q_segment_ids=seg, k_segment_ids=seg)\n"
        "torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)\n"
        "dq, dk, dv = fa.flash_attn_backward(q, q, q, q, out, lse, causal=True, scale=0.25, q_segment_ids=seg,\n"
        "                                    k_segment_ids=seg)\n"
        "torch.testing.assert_close(lm.lse_merge(out, lse, out, lse)[0], out, rtol=1e-5, atol=1e-5)\n"
        "x, w = torch.randn(3, 32), torch.rand(32)\n"
        "torch.testing.assert_close(rn.rms_norm(x, w), rn.rms_norm_reference(x, w))\n"
        "pos = torch.arange(19)[None]\n"
        "want = rp.apply_rope_reference(q, q, *rp.rope_cos_sin(pos, 16))[0]\n"
        "torch.testing.assert_close(rp.apply_rope(q, q, pos)[0], want)\n"
        "h, W, y = torch.randn(6, 16), torch.randn(40, 16), torch.tensor([1, 2, -100, 3, 39, 0])\n"
        "got = ce.fused_linear_cross_entropy(h, W, y, use_triton=True)[0]\n"
        "torch.testing.assert_close(got, ce.linear_cross_entropy_reference(h, W, y)[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_resolve_attn_backend():
    assert kernels.resolve_attn_backend("torch", "cpu") == "torch"
    assert kernels.resolve_attn_backend("auto", "cpu") == "torch"
    if torch.cuda.is_available():
        assert kernels.resolve_attn_backend("auto", "cuda") == "triton"
    with pytest.raises(ValueError, match="unknown attn backend"):
        kernels.resolve_attn_backend("sdpa", "cpu")
    if not kernels.flash_attn_available():
        with pytest.raises(ValueError, match="flash"):
            kernels.resolve_attn_backend("flash_attn", "cpu")


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.resolve_attn_backend("triton", "cpu") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        kernels.resolve_attn_backend("triton", "cpu")
    assert kernels.triton_available("cpu") is False
