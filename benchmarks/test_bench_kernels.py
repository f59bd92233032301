"""Microbenchmarks of longvila.kernels against torch baselines (run: ``pytest benchmarks/ --benchmark-only``).

Every Triton test also times its baseline in the same process and records ``extra_info``:
``baseline_ms``, ``ratio_vs_baseline`` (baseline time / ours: > 1 means the kernel is faster), and for attention
``tflops`` / ``baseline_tflops`` with FLOPs = 4*B*H*S^2*D (x0.5 causal) forward and 2.5x that backward. The chunked
cross-entropy also records peak memory (``peak_mib``, ``baseline_peak_mib``, ``memory_ratio``) on the GPU.
The baseline itself is benchmarked too, so both appear in pytest-benchmark's table, grouped per kernel.

GPU shapes: attention B=1, H=16, S=16384, D=128 causal bf16 (fwd and fwd+bwd) against SDPA's fastest backend;
the torch block backend on a packed block (8 documents) 16 q / 4 kv heads x 8192 x 128 bf16 against the math path;
CE 32768 tokens x 152064 vocab x 3584 hidden bf16; RMSNorm 32768x3584; RoPE 28q/4kv heads x 32768 x 128.
CPU shapes are tiny and only check that everything runs: the `triton` tests need the interpreter there, i.e. a
session started with ``TRITON_INTERPRET=1`` (benchmarks/conftest.py skips them otherwise).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longvila.distributed.lse import merge_attention as lse_merge_reference
from longvila.kernels import flash_attention as fa
from longvila.kernels.fused_linear_ce import fused_linear_cross_entropy
from longvila.kernels.lse_merge import lse_merge
from longvila.kernels.rmsnorm import rms_norm, rms_norm_reference
from longvila.kernels.rope import apply_rope, apply_rope_reference, rope_cos_sin

from bench_timing import ON_GPU, median_seconds, record, run_benchmark, sig


# ------------------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------------------
ATTN = dict(b=1, h=16, s=16384, d=128, dtype=torch.bfloat16) if ON_GPU else dict(b=1, h=2, s=48, d=32,
                                                                                  dtype=torch.float32)


def _attn_inputs(device):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (ATTN["b"], ATTN["h"], ATTN["s"], ATTN["d"])
    return [torch.randn(shape, generator=g).to(device=device, dtype=ATTN["dtype"]).requires_grad_() for _ in range(3)]


def _attn_flops(mode):
    fwd = 4 * ATTN["b"] * ATTN["h"] * ATTN["s"] ** 2 * ATTN["d"] * 0.5  # causal
    return {"fwd": fwd, "fwd_bwd": 3.5 * fwd}[mode]


def _sdpa_best(q, k, v, mode, rounds):
    """Fastest SDPA backend on this machine for the mode; returns (name, seconds)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    candidates = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION] \
        if ON_GPU else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    best = None
    for backend in candidates:
        def run(backend=backend):
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                if mode == "fwd_bwd":
                    out.backward(torch.ones_like(out))
        try:
            seconds = median_seconds(run, rounds["rounds"], rounds["warmup_rounds"])
        except RuntimeError:  # backend not available for this dtype/device/shape
            continue
        if best is None or seconds < best[1]:
            best = (backend.name, seconds)
    return best


def _triton_attention(q, k, v, mode):
    scale = 1.0 / math.sqrt(q.shape[-1])

    def run():
        out = fa.FlashAttentionFunction.apply(q, k, v, True, scale, None, None)
        if mode == "fwd_bwd":
            out.backward(torch.ones_like(out))
    return run


@pytest.mark.triton
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_attention_triton(benchmark, device, rounds, mode):
    benchmark.group = f"attention-{mode}"
    q, k, v = _attn_inputs(device)
    if mode == "fwd":
        q, k, v = (t.detach() for t in (q, k, v))
    ours = run_benchmark(benchmark, _triton_attention(q, k, v, mode), rounds)
    name, base = _sdpa_best(q, k, v, mode, rounds)
    flops = _attn_flops(mode)
    record(benchmark, ours, base, f"sdpa:{name}", shape=str(tuple(q.shape)), dtype=str(ATTN["dtype"]),
            causal=True, tflops=sig(flops / ours / 1e12), baseline_tflops=sig(flops / base / 1e12))


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_attention_sdpa_baseline(benchmark, device, rounds, mode):
    benchmark.group = f"attention-{mode}"
    q, k, v = _attn_inputs(device)

    def run():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if mode == "fwd_bwd":
            out.backward(torch.ones_like(out))
    seconds = run_benchmark(benchmark, run, rounds)
    benchmark.extra_info.update(tflops=sig(_attn_flops(mode) / seconds / 1e12), backend="sdpa default")


# ------------------------------------------------------------------------------------------------------------
# torch block backend on packed documents (ring/Ulysses blocks with segment ids)
# ------------------------------------------------------------------------------------------------------------
PACKED = dict(hq=16, hkv=4, s=8192, d=128, docs=8, dtype=torch.bfloat16) if ON_GPU else \
    dict(hq=4, hkv=2, s=1024, d=64, docs=8, dtype=torch.float32)


def _packed_inputs(device):
    """A causal block of PACKED["docs"] documents of random lengths, as ring attention's diagonal step sees it."""
    from longvila.distributed.block_attention import TorchBackend
    from longvila.distributed.block_contract import MathBackend

    g = torch.Generator().manual_seed(5)
    s = PACKED["s"]
    cuts = torch.randperm(s - 1, generator=g)[: PACKED["docs"] - 1].add(1).sort().values
    seg = torch.zeros(1, s, dtype=torch.long)
    seg[0, cuts] = 1
    seg = seg.cumsum(-1).to(device)
    q = torch.randn(1, PACKED["hq"], s, PACKED["d"], generator=g)
    k, v = (torch.randn(1, PACKED["hkv"], s, PACKED["d"], generator=g) for _ in range(2))
    q, k, v = (t.to(device=device, dtype=PACKED["dtype"]) for t in (q, k, v))
    return TorchBackend(), MathBackend(), (q, k, v, seg)


def _block_step(backend, q, k, v, seg):
    scale = 1.0 / math.sqrt(q.shape[-1])

    def run():
        out, lse = backend.forward(q, k, v, causal=True, scale=scale, q_segment_ids=seg, k_segment_ids=seg)
        backend.backward(torch.ones_like(out), q, k, v, out, lse, causal=True, scale=scale, q_segment_ids=seg,
                         k_segment_ids=seg)
    return run


def test_torch_block_backend_packed(benchmark, device, rounds):
    benchmark.group = "block-backend-packed-fwd_bwd"
    torch_backend, math_backend, (q, k, v, seg) = _packed_inputs(device)
    assert torch_backend._route(q, k, True, seg, seg)[0] == "documents"
    ours_step, base_step = _block_step(torch_backend, q, k, v, seg), _block_step(math_backend, q, k, v, seg)
    ours = run_benchmark(benchmark, ours_step, rounds)
    base = median_seconds(base_step, rounds["rounds"], rounds["warmup_rounds"])
    extra = {"shape": f"{PACKED['hq']}q/{PACKED['hkv']}kv heads x {PACKED['s']} x {PACKED['d']}, "
                      f"{PACKED['docs']} documents", "dtype": str(PACKED["dtype"])}
    if ON_GPU:
        ours_peak, base_peak = _peak_mib(ours_step), _peak_mib(base_step)
        extra.update(peak_mib=sig(ours_peak), baseline_peak_mib=sig(base_peak),
                     memory_ratio=sig(base_peak / ours_peak))
    record(benchmark, ours, base, "math block backend (explicit masked scores)",
            device_name=None if ON_GPU else "cpu (no interpreter: aten flash op)", **extra)


def test_math_block_backend_packed_baseline(benchmark, device, rounds):
    benchmark.group = "block-backend-packed-fwd_bwd"
    _, math_backend, (q, k, v, seg) = _packed_inputs(device)
    run_benchmark(benchmark, _block_step(math_backend, q, k, v, seg), rounds)


# ------------------------------------------------------------------------------------------------------------
# LSE merge
# ------------------------------------------------------------------------------------------------------------
MERGE = (1, 28, 32768, 128) if ON_GPU else (1, 2, 64, 32)


def _merge_inputs(device):
    g = torch.Generator().manual_seed(1)
    o1, o2 = (torch.randn(MERGE, generator=g).to(device) for _ in range(2))
    l1, l2 = (torch.randn(MERGE[:-1], generator=g).to(device) for _ in range(2))
    return o1, l1, o2, l2


@pytest.mark.triton
def test_lse_merge_triton(benchmark, device, rounds):
    benchmark.group = "lse-merge"
    args = _merge_inputs(device)
    ours = run_benchmark(benchmark, lambda: lse_merge(*args), rounds)
    base = median_seconds(lambda: lse_merge_reference(*args), rounds["rounds"], rounds["warmup_rounds"])
    record(benchmark, ours, base, "torch reference", shape=str(MERGE))


def test_lse_merge_torch_baseline(benchmark, device, rounds):
    benchmark.group = "lse-merge"
    args = _merge_inputs(device)
    run_benchmark(benchmark, lambda: lse_merge_reference(*args), rounds)


# ------------------------------------------------------------------------------------------------------------
# RMSNorm
# ------------------------------------------------------------------------------------------------------------
NORM = ((32768, 3584), torch.bfloat16) if ON_GPU else ((64, 96), torch.float32)


def _norm_inputs(device):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(NORM[0], generator=g).to(device=device, dtype=NORM[1]).requires_grad_()
    w = torch.ones(NORM[0][1], device=device, dtype=NORM[1], requires_grad=True)
    return x, w


def _norm_step(fn, x, w):
    def run():
        y = fn(x, w, 1e-6)
        y.backward(torch.ones_like(y))
    return run


@pytest.mark.triton
def test_rmsnorm_triton(benchmark, device, rounds):
    benchmark.group = "rmsnorm-fwd_bwd"
    x, w = _norm_inputs(device)
    ours = run_benchmark(benchmark, _norm_step(rms_norm, x, w), rounds)
    base = median_seconds(_norm_step(rms_norm_reference, x, w), rounds["rounds"], rounds["warmup_rounds"])
    record(benchmark, ours, base, "HF Qwen2RMSNorm formula", shape=str(NORM[0]), dtype=str(NORM[1]))


def test_rmsnorm_hf_baseline(benchmark, device, rounds):
    benchmark.group = "rmsnorm-fwd_bwd"
    x, w = _norm_inputs(device)
    run_benchmark(benchmark, _norm_step(rms_norm_reference, x, w), rounds)


# ------------------------------------------------------------------------------------------------------------
# RoPE
# ------------------------------------------------------------------------------------------------------------
ROPE = dict(b=1, hq=28, hk=4, s=32768, d=128, dtype=torch.bfloat16) if ON_GPU else dict(b=1, hq=4, hk=2, s=32, d=32,
                                                                                         dtype=torch.float32)


def _rope_inputs(device):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(ROPE["b"], ROPE["hq"], ROPE["s"], ROPE["d"], generator=g)
    k = torch.randn(ROPE["b"], ROPE["hk"], ROPE["s"], ROPE["d"], generator=g)
    q, k = (t.to(device=device, dtype=ROPE["dtype"]).requires_grad_() for t in (q, k))
    pos = torch.arange(ROPE["s"], device=device)[None].expand(ROPE["b"], -1)
    return q, k, pos


def _hf_rope(q, k, pos):
    cos, sin = rope_cos_sin(pos, q.shape[-1], 1e6)
    return apply_rope_reference(q, k, cos, sin)


def _rope_step(fn, q, k, pos):
    def run():
        qo, ko = fn(q, k, pos)
        torch.autograd.backward([qo, ko], [torch.ones_like(qo), torch.ones_like(ko)])
    return run


@pytest.mark.triton
def test_rope_triton(benchmark, device, rounds):
    benchmark.group = "rope-fwd_bwd"
    q, k, pos = _rope_inputs(device)
    ours = run_benchmark(benchmark, _rope_step(lambda a, b, p: apply_rope(a, b, p, 1e6), q, k, pos), rounds)
    base = median_seconds(_rope_step(_hf_rope, q, k, pos), rounds["rounds"], rounds["warmup_rounds"])
    record(benchmark, ours, base, "HF apply_rotary_pos_emb", shape=str(tuple(q.shape)), dtype=str(ROPE["dtype"]))


def test_rope_hf_baseline(benchmark, device, rounds):
    benchmark.group = "rope-fwd_bwd"
    q, k, pos = _rope_inputs(device)
    run_benchmark(benchmark, _rope_step(_hf_rope, q, k, pos), rounds)


# ------------------------------------------------------------------------------------------------------------
# chunked linear + cross-entropy
# ------------------------------------------------------------------------------------------------------------
CE = dict(n=32768, v=152064, h=3584, dtype=torch.bfloat16) if ON_GPU else dict(n=64, v=512, h=32, dtype=torch.float32)


def _ce_inputs(device):
    g = torch.Generator().manual_seed(4)
    h = (torch.randn(CE["n"], CE["h"], generator=g) * 0.5).to(device=device, dtype=CE["dtype"]).requires_grad_()
    w = (torch.randn(CE["v"], CE["h"], generator=g) * 0.02).to(device=device, dtype=CE["dtype"]).requires_grad_()
    labels = torch.randint(0, CE["v"], (CE["n"],), generator=g)
    labels[: CE["n"] // 10] = -100
    return h, w, labels.to(device)


def _naive_ce(h, w, labels):
    logits = (h @ w.t()).float()  # what an HF causal LM does: bf16 logits, upcast for the loss
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"), (labels != -100).sum()


def _ce_step(fn, h, w, labels):
    def run():
        h.grad = w.grad = None
        loss, _ = fn(h, w, labels)
        loss.backward()
    return run


def _peak_mib(fn):
    if not ON_GPU:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2**20


@pytest.mark.triton
def test_fused_linear_ce_triton(benchmark, device, rounds):
    benchmark.group = "linear-ce-fwd_bwd"
    h, w, labels = _ce_inputs(device)
    ours_step = _ce_step(fused_linear_cross_entropy, h, w, labels)
    base_step = _ce_step(_naive_ce, h, w, labels)
    ours = run_benchmark(benchmark, ours_step, rounds)
    base = median_seconds(base_step, rounds["rounds"], rounds["warmup_rounds"])
    extra = {"shape": f"{CE['n']} tokens x {CE['v']} vocab x {CE['h']} hidden", "dtype": str(CE["dtype"])}
    if ON_GPU:
        ours_peak, base_peak = _peak_mib(ours_step), _peak_mib(base_step)
        extra.update(peak_mib=sig(ours_peak), baseline_peak_mib=sig(base_peak),
                     memory_ratio=sig(base_peak / ours_peak))
    record(benchmark, ours, base, "naive full-logits linear + F.cross_entropy", **extra)


def test_linear_ce_naive_baseline(benchmark, device, rounds):
    benchmark.group = "linear-ce-fwd_bwd"
    h, w, labels = _ce_inputs(device)
    run_benchmark(benchmark, _ce_step(_naive_ce, h, w, labels), rounds)
