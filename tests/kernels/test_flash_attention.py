"""Flash attention (Triton) against a float64 torch reference: forward, LSE and gradients.

The `triton` tests launch the kernels: compiled on a GPU, and without CUDA in the Triton CPU interpreter session
(``TRITON_INTERPRET=1 pytest -m triton``, tiny odd shapes); `gpu` tests add bf16, large shapes and bit-exact
repeat-run determinism. Input validation and compiling every kernel for an H100 (no GPU needed) run in the ordinary
session.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from longvila.distributed.block_contract import MathBackend
from longvila.kernels import flash_attention as fa
from longvila.kernels.lse_merge import lse_merge

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
REFERENCE = MathBackend()  # the block-backend contract's explicit implementation; fp64 when given fp64
TOL = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _segments(make, b, s, n_docs):
    """Sorted random segment ids (B, S): packed documents of random lengths."""
    return torch.sort(make.randint(0, n_docs, (b, s)), dim=1).values.to(torch.int32)


def _reference(q, k, v, dout, causal, scale, qs, ks):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out, lse = REFERENCE.forward(q64, k64, v64, causal=causal, scale=scale, q_segment_ids=qs, k_segment_ids=ks)
    out.backward(dout.double())
    return out, lse, q64.grad, k64.grad, v64.grad


def _assert_close(name, got, want, tol, make):
    got = got.double()
    err = (got - want).abs().max().item() if got.numel() else 0.0
    scale = max(1.0, want.abs().max().item() if want.numel() else 1.0)
    assert err <= tol * scale, f"{name}: max err {err:.3e} > {tol * scale:.3e} ({make})"


def _check_lse(lse, ref_lse, tol, make):
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), f"-inf rows differ ({make})"
    assert not torch.isnan(lse).any()
    _assert_close("lse", lse.masked_fill(empty, 0), ref_lse.masked_fill(empty, 0), tol, make)


CASES = [
    # B, Hq, Hkv, Sq, Sk, D, causal, n_docs (0 = no segments), dtype
    (1, 2, 2, 1, 1, 16, True, 0, torch.float32),
    (1, 2, 2, 17, 17, 16, True, 0, torch.float32),
    (2, 4, 2, 45, 45, 64, False, 0, torch.float32),
    (1, 4, 2, 67, 67, 80, True, 3, torch.float32),
    (2, 2, 1, 33, 20, 32, True, 0, torch.float32),
    (1, 2, 1, 20, 33, 32, False, 2, torch.float32),
    (1, 2, 2, 45, 45, 64, True, 0, torch.float16),
    (2, 2, 2, 30, 30, 16, False, 3, torch.float16),
    (1, 4, 2, 40, 40, 96, True, 2, torch.float32),
    (1, 2, 2, 33, 33, 128, False, 0, torch.float32),
    (2, 4, 2, 50, 50, 64, True, 4, torch.float16),
]


@pytest.mark.triton
@pytest.mark.parametrize("b,hq,hkv,sq,sk,d,causal,n_docs,dtype", CASES)
def test_matches_float64_reference(make, b, hq, hkv, sq, sk, d, causal, n_docs, dtype):
    q, k, v = make(b, hq, sq, d, dtype=dtype), make(b, hkv, sk, d, dtype=dtype), make(b, hkv, sk, d, dtype=dtype)
    dout = make(b, hq, sq, d, dtype=dtype)
    qs = ks = None
    if n_docs:
        qs = _segments(make, b, sq, n_docs)
        ks = qs if sq == sk else _segments(make, b, sk, n_docs)
    scale = 1.0 / math.sqrt(d)
    out, lse = fa.flash_attn_forward(q, k, v, causal=causal, scale=scale, q_segment_ids=qs, k_segment_ids=ks)
    dq, dk, dv = fa.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, scale=scale,
                                        q_segment_ids=qs, k_segment_ids=ks)
    r_out, r_lse, r_dq, r_dk, r_dv = _reference(q, k, v, dout, causal, scale, qs, ks)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (b, hq, sq)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape and dk.dtype == dtype
    tol = TOL[dtype]
    _assert_close("out", out, r_out, tol, make)
    _check_lse(lse, r_lse, tol, make)
    for name, got, want in (("dq", dq, r_dq), ("dk", dk, r_dk), ("dv", dv, r_dv)):
        _assert_close(name, got, want, tol * 4, make)


@pytest.mark.triton
@pytest.mark.parametrize("block_m,block_n", [(32, 16), (16, 32)])
@pytest.mark.parametrize("n_docs", [0, 4])
def test_unequal_block_shapes(make, block_m, block_n, n_docs):
    """The GPU configs use BLOCK_M != BLOCK_N; the causal band and segment-range bookkeeping must not care."""
    b, hq, hkv, s, d = 1, 2, 1, 71, 32
    q, k, v, dout = make(b, hq, s, d), make(b, hkv, s, d), make(b, hkv, s, d), make(b, hq, s, d)
    seg = _segments(make, b, s, n_docs) if n_docs else None
    cfg = {"BLOCK_M": block_m, "BLOCK_N": block_n}
    out, lse = fa._forward(q, k, v, True, 0.2, seg, seg, config=cfg)
    dq, dk, dv = fa._backward(dout, q, k, v, out, lse, True, 0.2, seg, seg, dkdv_config=cfg, dq_config=cfg)
    r_out, r_lse, r_dq, r_dk, r_dv = _reference(q, k, v, dout, True, 0.2, seg, seg)
    _assert_close("out", out, r_out, 2e-4, make)
    _check_lse(lse, r_lse, 2e-4, make)
    for name, got, want in (("dq", dq, r_dq), ("dk", dk, r_dk), ("dv", dv, r_dv)):
        _assert_close(name, got, want, 1e-3, make)


@pytest.mark.triton
def test_unsorted_segment_ids(make):
    """Arbitrary (non-monotonic) ids stay correct: the kernels then just cannot narrow their loops."""
    b, h, s, d = 1, 2, 37, 16
    q, k, v, dout = make(b, h, s, d), make(b, h, s, d), make(b, h, s, d), make(b, h, s, d)
    seg = make.randint(0, 3, (b, s)).to(torch.int32)
    out, lse = fa.flash_attn_forward(q, k, v, causal=True, scale=0.25, q_segment_ids=seg, k_segment_ids=seg)
    grads = fa.flash_attn_backward(dout, q, k, v, out, lse, causal=True, scale=0.25, q_segment_ids=seg,
                                   k_segment_ids=seg)
    ref = _reference(q, k, v, dout, True, 0.25, seg, seg)
    _assert_close("out", out, ref[0], 2e-4, make)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref[2:]):
        _assert_close(name, got, want, 1e-3, make)


@pytest.mark.triton
def test_rows_without_keys_are_zero_with_neg_inf_lse(make):
    b, h, s, d = 1, 2, 24, 16
    q, k, v, dout = make(b, h, s, d), make(b, h, s, d), make(b, h, s, d), make(b, h, s, d)
    qs = torch.zeros(b, s, dtype=torch.int32, device=make.device)
    qs[:, 10:] = 5  # segment 5 exists only among the queries
    ks = torch.zeros(b, s, dtype=torch.int32, device=make.device)
    ks[:, 10:] = 7
    out, lse = fa.flash_attn_forward(q, k, v, causal=False, scale=0.25, q_segment_ids=qs, k_segment_ids=ks)
    assert torch.isneginf(lse[..., 10:]).all() and torch.isfinite(lse[..., :10]).all()
    assert (out[..., 10:, :] == 0).all()
    dq, dk, dv = fa.flash_attn_backward(dout, q, k, v, out, lse, causal=False, scale=0.25, q_segment_ids=qs,
                                        k_segment_ids=ks)
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert (dq[..., 10:, :] == 0).all() and (dk[..., 10:, :] == 0).all() and (dv[..., 10:, :] == 0).all()
    ref = _reference(q, k, v, dout, False, 0.25, qs, ks)
    _assert_close("out", out, ref[0], 2e-4, make)
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref[2:]):
        _assert_close(name, got, want, 1e-3, make)


@pytest.mark.triton
def test_backward_with_global_out_and_lse_like_ring_attention(make):
    """Two key blocks: partial forwards merged by LSE, then each block's backward against the *global* out/lse."""
    b, hq, hkv, s, d = 1, 4, 2, 29, 32
    q, dout = make(b, hq, s, d), make(b, hq, s, d)
    k, v = make(b, hkv, 2 * s, d), make(b, hkv, 2 * s, d)
    scale = 0.3
    (k1, k2), (v1, v2) = k.split(s, dim=2), v.split(s, dim=2)
    o1, l1 = fa.flash_attn_forward(q, k1, v1, causal=False, scale=scale)  # earlier block: fully visible
    o2, l2 = fa.flash_attn_forward(q, k2, v2, causal=True, scale=scale)  # diagonal block
    out, lse = lse_merge(o1, l1, o2, l2)
    dq1, dk1, dv1 = fa.flash_attn_backward(dout, q, k1, v1, out, lse, causal=False, scale=scale)
    dq2, dk2, dv2 = fa.flash_attn_backward(dout, q, k2, v2, out, lse, causal=True, scale=scale)

    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    visible = torch.ones(s, 2 * s, dtype=torch.bool, device=make.device)
    visible[:, s:] = torch.ones(s, s, dtype=torch.bool, device=make.device).tril()
    sc = (q64 @ k64.repeat_interleave(2, 1).transpose(-1, -2)) * scale
    sc = sc.masked_fill(~visible, float("-inf"))
    ref_out = torch.softmax(sc, -1) @ v64.repeat_interleave(2, 1)
    ref_out.backward(dout.double())
    _assert_close("out", out, ref_out, 2e-4, make)
    _assert_close("lse", lse, torch.logsumexp(sc, -1), 2e-4, make)
    _assert_close("dq", dq1 + dq2, q64.grad, 1e-3, make)
    _assert_close("dk", torch.cat([dk1, dk2], 2), k64.grad, 1e-3, make)
    _assert_close("dv", torch.cat([dv1, dv2], 2), v64.grad, 1e-3, make)


@pytest.mark.triton
def test_autograd_function_with_cu_seqlens_equals_per_document_attention(make):
    h, d = 2, 16
    lens = [5, 1, 19]
    total = sum(lens) + 3  # 3 trailing tokens past cu_seqlens[-1] form their own segment
    cu = torch.tensor([0, 5, 6, 25], dtype=torch.int32)
    q, k, v = (make(1, h, total, d).requires_grad_() for _ in range(3))
    out = fa.flash_attention(q, k, v, causal=True, cu_seqlens=cu)
    dout = make(1, h, total, d)
    out.backward(dout)
    grads = [t.grad.clone() for t in (q, k, v)]

    bounds = [0, 5, 6, 25, total]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        qd, kd, vd = (t.detach()[:, :, lo:hi].double().requires_grad_() for t in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
        ref.backward(dout[:, :, lo:hi].double())
        _assert_close(f"out[{lo}:{hi}]", out.detach()[:, :, lo:hi], ref, 2e-4, make)
        for name, g, r in zip("qkv", grads, (qd.grad, kd.grad, vd.grad)):
            _assert_close(f"d{name}[{lo}:{hi}]", g[:, :, lo:hi], r, 1e-3, make)


@pytest.mark.triton
def test_strided_inputs_from_bshd_layout(make):
    """HF hands (B, S, H, D) storage viewed as (B, H, S, D); the kernels read any strides."""
    b, s, h, d = 2, 23, 2, 16
    q, k, v = (make(b, s, h, d).transpose(1, 2) for _ in range(3))
    dout = make(b, s, h, d).transpose(1, 2)
    assert not q.is_contiguous()
    out, lse = fa.flash_attn_forward(q, k, v, causal=True, scale=0.25)
    grads = fa.flash_attn_backward(dout, q, k, v, out, lse, causal=True, scale=0.25)
    ref = _reference(q, k, v, dout, True, 0.25, None, None)
    _assert_close("out", out, ref[0], 2e-4, make)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref[2:]):
        _assert_close(name, got, want, 1e-3, make)


def test_segment_ids_equal_cu_seqlens(make):
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2]], dtype=torch.int32)
    assert torch.equal(fa.cu_seqlens_to_segment_ids(torch.tensor([0, 3, 5, 9]), 9), seg)
    with pytest.raises(ValueError, match="cu_seqlens"):
        fa.cu_seqlens_to_segment_ids(torch.tensor([1, 3]), 9)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k_heads": 3}, "multiple of kv heads"),
        ({"dtype": torch.float64}, "dtype"),
        ({"only_q_segments": True}, "together"),
        ({"d": 512}, "head dim"),
    ],
)
def test_rejects_bad_inputs(make, kwargs, match):
    d = kwargs.get("d", 16)
    dtype = kwargs.get("dtype", torch.float32)
    q = make(1, 4, 8, d, dtype=dtype)
    k = make(1, kwargs.get("k_heads", 2), 8, d, dtype=dtype)
    qs = torch.zeros(1, 8, dtype=torch.int32) if kwargs.get("only_q_segments") else None
    with pytest.raises(ValueError, match=match):
        fa.flash_attn_forward(q, k, k, causal=True, scale=1.0, q_segment_ids=qs)


_SM90_SCRIPT = r"""
import json
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
import longvila.kernels.flash_attention as fa
from longvila.kernels import fused_linear_ce, lse_merge, rmsnorm, rope

FLOATS = {"qk_scale", "sm_scale", "eps"}


def build(module, name, consts, pointers, warps, stages):
    fn = getattr(module, name)  # the module-level @triton.jit kernel (its autotuner, if any, wraps this same one)
    assert isinstance(fn, JITFunction), f"{name} is a {type(fn).__name__}, not a compiled-mode JITFunction"
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in consts:
            signature[arg] = "constexpr"
            continue
        signature[arg] = "*" + pointers[arg] if arg in pointers else "fp32" if arg in FLOATS else "i32"
        if arg in pointers or arg.startswith("stride_"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # what the launcher specialises for aligned tensors
    compiled = triton.compile(ASTSource(fn, signature, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    return {"shared": compiled.metadata.shared, "wgmma": "wgmma" in compiled.asm["ptx"]}


def attention_pointers(dtype):
    ptr = {n: dtype for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    ptr.update({n: "i32" for n in ("QSEG", "KSEG", "KR_LO", "KR_HI", "QR_LO", "QR_HI")}, LSE="fp32", DELTA="fp32")
    return ptr


report = {}
configs = {"_attn_fwd_kernel": fa._FWD_CONFIGS[0], "_attn_bwd_dkdv_kernel": fa._DKDV_CONFIGS[0],
           "_attn_bwd_dq_kernel": fa._DQ_CONFIGS[0]}
variants = [("bf16", 128, True, True, None), ("fp16", 64, False, False, None)]
if sys.argv[1] == "all":
    variants += [("bf16", 80, True, False, None), ("fp32", 128, True, True, fa._SAFE_CONFIG)]
for dtype, d, causal, seg, forced in variants:
    for name, config in configs.items():
        block_m, block_n, warps, stages = forced or config
        consts = {"HEAD_DIM": d, "BLOCK_D": max(16, 1 << (d - 1).bit_length()), "IS_CAUSAL": causal, "HAS_SEG": seg,
                  "UPCAST": False, "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32", "BLOCK_M": block_m,
                  "BLOCK_N": block_n}
        info = build(fa, name, consts, attention_pointers(dtype), warps, stages)
        info["needs_wgmma"] = dtype != "fp32"
        report[f"{name}[{dtype},d={d},causal={causal},seg={seg}]"] = info
report["rmsnorm_fwd"] = build(rmsnorm, "_rmsnorm_fwd_kernel", {"BLOCK_N": 4096},
                              {"X": "bf16", "W": "bf16", "Y": "bf16", "RSTD": "fp32"}, 8, 1)
report["rmsnorm_bwd"] = build(rmsnorm, "_rmsnorm_bwd_kernel", {"BLOCK_N": 4096},
                              {"DY": "bf16", "X": "bf16", "W": "bf16", "RSTD": "fp32", "DX": "bf16",
                               "DW_PARTIAL": "fp32"}, 8, 1)
report["rope"] = build(rope, "_rope_kernel", {"BLOCK_HQ": 32, "BLOCK_HK": 4, "BLOCK_HALF": 64, "BACKWARD": False},
                       {"Q": "bf16", "K": "bf16", "QO": "bf16", "KO": "bf16", "COS": "fp32", "SIN": "fp32"}, 4, 1)
report["ce_chunk"] = build(fused_linear_ce, "_ce_chunk_kernel", {"BLOCK_V": 8192},
                           {"LOGITS": "fp32", "GRAD": "bf16", "LABELS": "i64", "LOSS": "fp32"}, 16, 1)
report["lse_merge"] = build(lse_merge, "_lse_merge_kernel", {"BLOCK_R": 32, "BLOCK_D": 128},
                            {n: "fp32" for n in ("O1", "L1", "O2", "L2", "OUT", "LOUT")}, 4, 1)
print(json.dumps(report))
"""


def _compile_for_h100(variants: str) -> dict:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="longvila-sm90-")
    try:
        proc = subprocess.run([sys.executable, "-c", _SM90_SCRIPT, variants], env=env, capture_output=True,
                              text=True, timeout=600)
    finally:
        shutil.rmtree(env["TRITON_CACHE_DIR"], ignore_errors=True)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas available to assemble for sm_90")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, info in report.items():
        assert info["shared"] <= 227 * 1024, f"{name}: {info['shared']} B of shared memory"
        if info.get("needs_wgmma"):
            assert info["wgmma"], f"{name} does not use Hopper's wgmma tensor-core instructions"
    return report


def test_all_kernels_compile_for_h100_without_a_gpu():
    """Every kernel builds for sm_90: flash attention with its default GPU configs (bf16 d=128 causal packed, fp16
    d=64 full), plus RMSNorm, RoPE, the CE chunk and the LSE merge. Shared memory fits and the attention kernels use
    Hopper's wgmma. Runs in a fresh process without TRITON_INTERPRET, so the kernels are compiled-mode ones whatever
    the mode of this session.
    """
    assert len(_compile_for_h100("default")) == 11


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs with the GPU tests (pytest -m gpu on a CUDA machine)")
def test_attention_compiles_for_h100_in_more_variants():
    """d=80 (padded to 128) and fp32 (IEEE dots, the fall-back config): about a minute and a half of compiling on two
    cores, so it runs with the GPU tests (``pytest -m gpu``) rather than in the CPU CI, which compiles every kernel's
    default variant for sm_90 above."""
    assert len(_compile_for_h100("all")) == 17


# ------------------------------------------------------------------------------------------------------------
# GPU only
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal,n_docs,hkv", [(True, 0, 8), (True, 5, 2), (False, 0, 2)])
@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_large_matches_fp32_reference(make, causal, n_docs, hkv):
    b, hq, s, d = 2, 8, 1031, 128
    q, k, v = make(b, hq, s, d, dtype=torch.bfloat16), make(b, hkv, s, d, dtype=torch.bfloat16), \
        make(b, hkv, s, d, dtype=torch.bfloat16)
    dout = make(b, hq, s, d, dtype=torch.bfloat16)
    seg = _segments(make, b, s, n_docs) if n_docs else None
    scale = d ** -0.5
    out, lse = fa.flash_attn_forward(q, k, v, causal=causal, scale=scale, q_segment_ids=seg, k_segment_ids=seg)
    dq, dk, dv = fa.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, scale=scale, q_segment_ids=seg,
                                        k_segment_ids=seg)
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    r_out, r_lse = REFERENCE.forward(q32, k32, v32, causal=causal, scale=scale, q_segment_ids=seg,
                                          k_segment_ids=seg)
    r_out.backward(dout.float())
    _assert_close("out", out, r_out.double(), 2e-2, make)
    _assert_close("lse", lse, r_lse.double(), 1e-2, make)
    for name, got, want in (("dq", dq, q32.grad), ("dk", dk, k32.grad), ("dv", dv, v32.grad)):
        _assert_close(name, got, want.double(), 5e-2, make)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_backward_is_bit_reproducible_on_gpu(make):
    b, hq, hkv, s, d = 1, 16, 4, 4096, 128
    q, k, v = make(b, hq, s, d, dtype=torch.bfloat16), make(b, hkv, s, d, dtype=torch.bfloat16), \
        make(b, hkv, s, d, dtype=torch.bfloat16)
    dout = make(b, hq, s, d, dtype=torch.bfloat16)
    seg = _segments(make, b, s, 7)
    out, lse = fa.flash_attn_forward(q, k, v, causal=True, scale=0.1, q_segment_ids=seg, k_segment_ids=seg)
    first = fa.flash_attn_backward(dout, q, k, v, out, lse, causal=True, scale=0.1, q_segment_ids=seg,
                                   k_segment_ids=seg)
    for _ in range(3):
        again = fa.flash_attn_backward(dout, q, k, v, out, lse, causal=True, scale=0.1, q_segment_ids=seg,
                                       k_segment_ids=seg)
        for a, b_ in zip(first, again):
            assert torch.equal(a, b_)
