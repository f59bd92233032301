"""longvila.kernels package API: import safety, triton_available, the interpreter mode; and resolve_backend
(``longvila/distributed/block_attention.py``), the one place --attn_backend is decided, as it sees the kernels."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import longvila.kernels as kernels
from longvila.distributed.block_attention import resolve_backend
from longvila.kernels._triton import interpreting


@pytest.mark.triton
def test_interpreter_is_active_on_cpu():
    """Without CUDA the `triton` session must really run the Triton kernels on CPU tensors through the interpreter."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present: kernels run compiled")
    assert os.environ.get("TRITON_INTERPRET") == "1" and interpreting()
    from longvila.kernels.lse_merge import _merge_launch

    o = torch.randn(3, 4)
    out, lse = _merge_launch(o, torch.zeros(3), o, torch.zeros(3))  # a Triton launch on CPU tensors
    torch.testing.assert_close(out, o)
    torch.testing.assert_close(lse, torch.full((3,), float(torch.log(torch.tensor(2.0)))))
    assert kernels.triton_available() and kernels.triton_available("cpu")
    assert resolve_backend("triton", "cpu").name == "triton"


def _run_python(code: str, interpret: bool) -> None:
    """Run ``code`` in a fresh CPU-only interpreter whose environment has ``TRITON_INTERPRET=1`` or lacks it (the
    mode is fixed at import, so only a new process can show either)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

def test_everything_imports_on_cpu_without_the_interpreter():
    code = (
        "import torch, longvila.kernels as k\n"
        "import longvila.kernels.flash_attention, longvila.kernels.lse_merge, longvila.kernels.rmsnorm\n"
        "import longvila.kernels.rope, longvila.kernels.fused_linear_ce as ce\n"
        "assert k.triton_available('cpu') is False\n"
        "from longvila.distributed.block_attention import resolve_backend\n"
        "assert resolve_backend('auto', 'cpu').name == 'torch'\n"
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
    _run_python(code, interpret=False)


def test_interpreter_from_the_process_environment_runs_every_kernel():
    """``TRITON_INTERPRET=1`` in the environment a process starts with is all a CPU needs: every kernel runs in the
    interpreter, also when transformers imported triton (and jitted triton's own ``tl.max``/``tl.sum``) first."""
    pytest.importorskip("triton")
    code = (
        "import sys, torch, transformers.models.qwen2.modeling_qwen2\n"
        "assert 'triton' in sys.modules\n"
        "from longvila.kernels._triton import interpreting\n"
        "assert interpreting()\n"
        "from longvila.kernels import flash_attention as fa, fused_linear_ce as ce, lse_merge as lm\n"
        "from longvila.kernels import rmsnorm as rn, rope as rp\n"
        "q = torch.randn(1, 2, 19, 16)\n"
        "seg = torch.tensor([[0] * 7 + [1] * 12], dtype=torch.int32)\n"
        "out, lse = fa.flash_attn_forward(q, q, q, causal=True, scale=0.25, q_segment_ids=seg, k_segment_ids=seg)\n"
        "from longvila.distributed.block_contract import MathBackend\n"
        "ref, _ = MathBackend().forward(q, q, q, causal=True, scale=0.25, q_segment_ids=seg, k_segment_ids=seg)\n"
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
        "from longvila.model.loss import cross_entropy_sum\n"
        "torch.testing.assert_close(got, cross_entropy_sum(h, W, y)[0])\n"
    )
    _run_python(code, interpret=True)


def test_interpreter_switched_on_after_import_is_refused_clearly():
    """The mode is fixed when longvila.kernels is imported: setting TRITON_INTERPRET later changes nothing, and a
    launch on CPU tensors says that the variable belongs in the process environment."""
    pytest.importorskip("triton")
    code = (
        "import os, torch\n"
        "import longvila.kernels as k\n"
        "from longvila.kernels import lse_merge as lm\n"
        "from longvila.kernels._triton import interpreting\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "assert not interpreting() and k.triton_available('cpu') is False\n"
        "o = torch.randn(3, 4)\n"
        "try:\n"
        "    lm.lse_merge(o, torch.zeros(3), o, torch.zeros(3))\n"
        "except RuntimeError as e:\n"
        "    assert 'set after' in str(e) and 'environment' in str(e), str(e)\n"
        "else:\n"
        "    raise AssertionError('a launch on CPU after switching the interpreter on late should fail clearly')\n"
    )
    _run_python(code, interpret=False)


def test_everything_imports_without_triton():
    """Where triton is absent (macOS): the kernel modules import, torch paths work, a launch raises clearly."""
    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, longvila.kernels as k\n"
        "from longvila.kernels import flash_attention as fa, fused_linear_ce as ce, lse_merge, rmsnorm, rope\n"
        "from longvila.distributed.block_attention import resolve_backend\n"
        "assert k.triton_available() is False and resolve_backend('auto', 'cpu').name == 'torch'\n"
        "loss, n = ce.cross_entropy_sum(torch.randn(3, 8), torch.randn(5, 8), torch.tensor([1, 2, 3]))\n"
        "assert int(n) == 3\n"
        "assert rmsnorm.FusedRMSNorm(8)(torch.randn(2, 8)).shape == (2, 8)\n"
        "q = torch.randn(1, 1, 4, 16)\n"
        "for launch in (lambda: fa.flash_attn_forward(q, q, q, causal=True, scale=1.0),\n"
        "               lambda: fa._attn_fwd_kernel[(1,)](q)):\n"
        "    try:\n"
        "        launch()\n"
        "    except RuntimeError as e:\n"
        "        assert 'triton is not installed' in str(e), str(e)\n"
        "    else:\n"
        "        raise AssertionError('a launch without triton should fail clearly')\n"
    )
    _run_python(code, interpret=False)


def test_resolve_backend():
    assert resolve_backend("torch", "cpu").name == "torch"
    assert resolve_backend("auto", "cpu").name == "torch"
    assert resolve_backend("math", "cpu").name == "math"
    if torch.cuda.is_available():
        assert resolve_backend("auto", "cuda").name == "triton"
    with pytest.raises(ValueError, match="unknown attn backend"):
        resolve_backend("sdpa", "cpu")
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash"):
            resolve_backend("flash_attn", "cpu")


@pytest.mark.skipif(interpreting(), reason="this session runs the CPU interpreter; test_interpreter_is_active_on_cpu "
                    "checks the triton backend on CPU there")
def test_triton_backend_on_cpu_needs_the_interpreter():
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_backend("triton", "cpu")
    assert kernels.triton_available("cpu") is False
