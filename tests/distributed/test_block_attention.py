"""Block backends against an independent autograd reference, including the ring property: per-block backward
against the GLOBAL out/LSE sums to the full gradient."""

import importlib.util

import pytest
import torch

from longvila.distributed.block_attention import TorchBackend, available_backends, block_attention, get_block_backend
from longvila.distributed.block_contract import MathBackend
from longvila.distributed.lse import merge_attention

from .sp_cases import block_inputs, reference_attention


def _ref_grads(q, k, v, seg, causal, scale, dout):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = reference_attention(*leaves, scale=scale, causal=causal, segment_ids=seg)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("backend", ["math", "torch"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_backend_matches_reference(backend, causal, packed, hkv):
    q, k, v, seg = block_inputs(hkv=hkv)
    seg = seg if packed else None
    dout = torch.randn_like(q)
    ref_out, ref_grads = _ref_grads(q, k, v, seg, causal, 0.3, dout)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = block_attention(*leaves, causal=causal, scale=0.3, q_segment_ids=seg, k_segment_ids=seg, backend=backend)
    out.backward(dout)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    for got, want in zip((t.grad for t in leaves), ref_grads):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-11, rtol=0)


def test_torch_backend_fp32_and_lse():
    q, k, v, _ = block_inputs(dtype=torch.float32)
    out, lse = get_block_backend("torch").forward(q, k, v, causal=True, scale=0.3)
    ref_out, ref_lse = MathBackend().forward(q.double(), k.double(), v.double(), causal=True, scale=0.3)
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), ref_out, atol=2e-6, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-6, rtol=0)


@pytest.mark.parametrize("backend", ["math", "torch"])
def test_rows_without_keys_are_zero_with_neg_inf_lse(backend):
    q, k, v, _ = block_inputs(s=6)
    q_seg = torch.tensor([[1, 1, 2, 2, 3, 3]] * 2)
    k_seg = torch.tensor([[1, 1, 1, 3, 3, 3]] * 2)  # no key of segment 2
    be = get_block_backend(backend)
    out, lse = be.forward(q, k, v, causal=False, scale=0.5, q_segment_ids=q_seg, k_segment_ids=k_seg)
    assert torch.isneginf(lse[:, :, 2:4]).all() and torch.isfinite(lse[:, :, [0, 1, 4, 5]]).all()
    assert torch.equal(out[:, :, 2:4], torch.zeros_like(out[:, :, 2:4]))
    dq, dk, dv = be.backward(torch.ones_like(out), q, k, v, out, lse, causal=False, scale=0.5, q_segment_ids=q_seg,
                             k_segment_ids=k_seg)
    assert all(torch.isfinite(t).all() for t in (dq, dk, dv))
    assert torch.equal(dq[:, :, 2:4], torch.zeros_like(dq[:, :, 2:4]))


def _kernels_present() -> bool:
    return importlib.util.find_spec("longvila.kernels.flash_attention") is not None


def _triton_or_skip():
    """The Triton backend and its device: CUDA when present, else CPU (`triton` tests, so the interpreter session)."""
    if not _kernels_present():
        pytest.skip("longvila.kernels.flash_attention is not available")
    return get_block_backend("triton"), ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("backend", ["math", "torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_blockwise_forward_and_backward_against_global_lse(backend):
    """What ring attention relies on: merge key blocks forward; backward each block with the merged out/LSE."""
    dtype, device, tol = torch.float64, "cpu", 1e-11
    if backend == "triton":
        be, device = _triton_or_skip()
        dtype, tol = torch.float32, 2e-3
    else:
        be = get_block_backend(backend)
    q, k, v, seg = (t.to(device) for t in block_inputs(hkv=2, s=16))
    dout = torch.randn_like(q)
    ref_out, (rdq, rdk, rdv) = _ref_grads(q, k, v, seg, False, 0.4, dout)
    q, k, v, dout = (t.to(dtype) for t in (q, k, v, dout))
    halves = (slice(0, 5), slice(5, 16))  # uneven blocks
    out = lse = None
    for ks in halves:
        o, l = be.forward(q, k[:, :, ks], v[:, :, ks], causal=False, scale=0.4, q_segment_ids=seg,
                          k_segment_ids=seg[:, ks])
        out, lse = merge_attention(out, lse, o, l)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=0)
    out = out.to(dtype)
    dq = torch.zeros_like(q, dtype=torch.float64)
    dk, dv = torch.zeros_like(k, dtype=torch.float64), torch.zeros_like(v, dtype=torch.float64)
    for ks in halves:
        bq, bk, bv = be.backward(dout, q, k[:, :, ks], v[:, :, ks], out, lse, causal=False, scale=0.4,
                                 q_segment_ids=seg, k_segment_ids=seg[:, ks])
        dq += bq.double()
        dk[:, :, ks] += bk.double()
        dv[:, :, ks] += bv.double()
    for got, want in ((dq, rdq), (dk, rdk), (dv, rdv)):
        torch.testing.assert_close(got, want, atol=tol * 5, rtol=0)


def test_contract_validation_errors():
    q, k, v, seg = block_inputs()
    be = get_block_backend("math")
    with pytest.raises(ValueError, match="together"):
        be.forward(q, k, v, causal=False, scale=1.0, q_segment_ids=seg)
    with pytest.raises(ValueError, match="not a multiple of kv heads"):
        be.forward(q[:, :3], k, v, causal=False, scale=1.0)
    with pytest.raises(ValueError, match="unknown attention block backend 'nope'"):
        get_block_backend("nope")
    with pytest.raises(ValueError, match="callable"):
        get_block_backend(object())


@pytest.mark.parametrize("backend", ["math", "torch"])
@pytest.mark.parametrize("sq,sk", [(5, 24), (24, 9)])
def test_causal_non_square_block_is_top_left_aligned(backend, sq, sk):
    """Query i sees keys 0..i whatever the block's shape (the Triton kernel's rule); the torch backend, whose
    fused ops would align such a block bottom-right, must agree with an explicit mask."""
    q, k, v, seg = block_inputs()
    q, k, v = q[:, :, :sq], k[:, :, :sk], v[:, :, :sk]
    mask = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None]
    want_lse = torch.logsumexp((q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 0.3).masked_fill(~mask, -torch.inf),
                               dim=-1)
    want = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 0.3).masked_fill(~mask, -torch.inf),
                         dim=-1) @ v.repeat_interleave(2, 1)
    out, lse = get_block_backend(backend).forward(q, k, v, causal=True, scale=0.3)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, want_lse, atol=1e-12, rtol=0)
    if sq < sk:  # the first sq rows of the square block over the same keys
        square, _ = get_block_backend(backend).forward(torch.cat([q, k.repeat_interleave(2, 1)[:, :, sq:]], 2), k, v,
                                                       causal=True, scale=0.3)
        torch.testing.assert_close(out, square[:, :, :sq], atol=1e-12, rtol=0)


def test_torch_backend_routes():
    q = torch.zeros(1, 2, 6, 8, dtype=torch.bfloat16)
    route = TorchBackend()._route
    sorted_ids, scattered = torch.tensor([[1, 1, 2, 2, 2, 3]]), torch.tensor([[1, 2, 1, 2, 2, 3]])
    assert route(q, q, False, None, None) == ("flash", None)
    assert route(q, q, True, sorted_ids, sorted_ids) == ("documents", [[(0, 2, 0, 2), (2, 5, 2, 5), (5, 6, 5, 6)]])
    assert route(q, q, True, scattered, scattered) == ("math", None)  # document 1 is not one run
    # Causal pieces must sit on the block's diagonal; non-causal ones may pair any ranges of one document.
    shifted = torch.tensor([[1, 2, 2, 2, 3, 3]])
    assert route(q, q, True, sorted_ids, shifted) == ("math", None)
    assert route(q, q, False, sorted_ids, shifted)[1] == [[(0, 2, 0, 1), (2, 5, 1, 4), (5, 6, 4, 6)]]
    assert route(q.to("meta"), q, False, None, None) == ("math", None)  # neither CPU nor CUDA: the explicit path
    assert route(q[:, :, :4], q, True, None, None) == ("math", None)  # fused ops align non-square causal otherwise


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_blocks_in_low_precision_match_float64(dtype):
    """The per-document route in the dtypes training uses, against the float64 reference (GQA, uneven blocks)."""
    q, k, v, seg = block_inputs(hkv=2, s=41, d=16, seed=3)
    dout = torch.randn_like(q)
    ref_out, ref_grads = _ref_grads(q, k, v, seg, True, 0.25, dout)
    be = TorchBackend()
    lq, lk, lv, ld = (t.to(dtype) for t in (q, k, v, dout))
    assert be._route(lq, lk, True, seg, seg)[0] == "documents"
    out, lse = be.forward(lq, lk, lv, causal=True, scale=0.25, q_segment_ids=seg, k_segment_ids=seg)
    grads = be.backward(ld, lq, lk, lv, out, lse, causal=True, scale=0.25, q_segment_ids=seg, k_segment_ids=seg)
    out_tol, grad_tol = (2e-6, 8e-6) if dtype == torch.float32 else (3e-2, 6e-2)  # bf16: ~8 bits of mantissa
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, atol=out_tol, rtol=0)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, atol=grad_tol, rtol=0)


def test_packed_blocks_never_take_the_quadratic_path(monkeypatch):
    """Packed documents (sorted ids, ring-style uneven key blocks included) run per document on the fused op:
    the math path, which builds (Sq, Sk) scores, is never called, and the result equals the reference."""
    def refuse(*args, **kwargs):
        raise AssertionError("the torch backend fell back to the O(S^2) math path")

    be = TorchBackend()
    monkeypatch.setattr(be._math, "forward", refuse)
    monkeypatch.setattr(be._math, "backward", refuse)
    q, k, v, seg = block_inputs(hkv=2, s=29)
    dout = torch.randn_like(q)
    for causal, ks in ((True, slice(None)), (False, slice(7, 23))):
        kseg = seg[:, ks]
        out, lse = be.forward(q, k[:, :, ks], v[:, :, ks], causal=causal, scale=0.3, q_segment_ids=seg,
                              k_segment_ids=kseg)
        ref_out, ref_lse = MathBackend().forward(q, k[:, :, ks], v[:, :, ks], causal=causal, scale=0.3,
                                                 q_segment_ids=seg, k_segment_ids=kseg)
        torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
        torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=0)
        got = be.backward(dout, q, k[:, :, ks], v[:, :, ks], out, lse, causal=causal, scale=0.3, q_segment_ids=seg,
                          k_segment_ids=kseg)
        want = MathBackend().backward(dout, q, k[:, :, ks], v[:, :, ks], ref_out, ref_lse, causal=causal, scale=0.3,
                                      q_segment_ids=seg, k_segment_ids=kseg)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_backend_lookup_and_custom_backend_in_the_dispatcher():
    """Names build a backend, objects pass through, and a dispatcher resolves its backend once and uses that very
    object for every call: a custom backend needs no process-wide registration."""
    from longvila.distributed.attention import AttentionDispatcher

    assert {"math", "torch", "triton", "flash_attn"} <= set(available_backends())
    assert isinstance(get_block_backend("math"), MathBackend) and isinstance(get_block_backend(), TorchBackend)

    class Counting(MathBackend):
        calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return super().forward(*args, **kwargs)

    custom = Counting()
    assert get_block_backend(custom) is custom
    dispatcher = AttentionDispatcher(backend=custom)
    assert dispatcher.backend is custom
    q, k, v, _ = block_inputs()
    module = torch.nn.Module()
    out, _ = dispatcher(module, q, k, v, scaling=0.3)
    out2, _ = AttentionDispatcher(backend="math")(module, q, k, v, scaling=0.3)
    assert custom.calls == 1
    torch.testing.assert_close(out, out2, atol=0, rtol=0)


def test_optional_backends_fail_clearly():
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(RuntimeError, match="flash-attn"):
            get_block_backend("flash_attn")
    if not _kernels_present():
        with pytest.raises(RuntimeError, match="longvila.kernels.flash_attention"):
            get_block_backend("triton")


@pytest.mark.triton
def test_triton_backend_conforms():
    tri, device = _triton_or_skip()
    ref = MathBackend()
    q, k, v, seg = (t.to(device) for t in block_inputs(hkv=2, s=20, dtype=torch.float32))
    for causal, s in ((True, None), (False, seg), (True, seg)):
        o1, l1 = tri.forward(q, k, v, causal=causal, scale=0.3, q_segment_ids=s, k_segment_ids=s)
        o2, l2 = ref.forward(q, k, v, causal=causal, scale=0.3, q_segment_ids=s, k_segment_ids=s)
        torch.testing.assert_close(o1.float(), o2.float(), atol=2e-3, rtol=0)
        torch.testing.assert_close(l1.float(), l2.float(), atol=2e-3, rtol=0)
        g1 = tri.backward(torch.ones_like(o2), q, k, v, o2, l2, causal=causal, scale=0.3, q_segment_ids=s,
                          k_segment_ids=s)
        g2 = ref.backward(torch.ones_like(o2), q, k, v, o2, l2, causal=causal, scale=0.3, q_segment_ids=s,
                          k_segment_ids=s)
        for a, b in zip(g1, g2):
            assert a.shape == b.shape
            torch.testing.assert_close(a.float(), b.float(), atol=5e-3, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32), ("torch", torch.bfloat16),
                                           ("flash_attn", torch.bfloat16)])
def test_cuda_backends_match_cpu_reference(backend, dtype):
    """fp32 "torch" runs the math path, bf16 "torch" PyTorch's FlashAttention-2 op, per document with segment ids
    (the route is asserted, not assumed)."""
    if backend == "flash_attn" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    q, k, v, seg = block_inputs(hkv=2, s=67, d=64)
    dout = torch.randn_like(q)
    be = get_block_backend(backend)
    for causal, s in ((True, None), (False, None), (True, seg)):
        ref_out, ref_grads = _ref_grads(q, k, v, s, causal, 0.125, dout)
        cq, ck, cv, cd = (t.cuda().to(dtype) for t in (q, k, v, dout))
        cs = None if s is None else s.cuda()
        if backend == "torch":
            want_route = "math" if dtype == torch.float32 else ("flash" if s is None else "documents")
            assert TorchBackend()._route(cq, ck, causal, cs, cs)[0] == want_route
        out, lse = be.forward(cq, ck, cv, causal=causal, scale=0.125, q_segment_ids=cs, k_segment_ids=cs)
        assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
        torch.testing.assert_close(out.double().cpu(), ref_out, atol=tol, rtol=0)
        grads = be.backward(cd, cq, ck, cv, out, lse, causal=causal, scale=0.125, q_segment_ids=cs, k_segment_ids=cs)
        for got, want in zip(grads, ref_grads):
            assert got.shape == want.shape
            torch.testing.assert_close(got.double().cpu(), want, atol=tol * 4, rtol=0)
