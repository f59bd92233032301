"""Chunked linear + cross-entropy that never materialises the full logits (Liger-style).

Why: at 256K tokens with a 152K vocabulary the fp32 logits alone take ~150 GB. Here only the rows with a label
(``!= ignore_index``) are processed, in chunks of tokens; for each chunk the logits are computed (cuBLAS), a
Triton kernel turns them *in place* into the per-token loss and the gradient of the logits (softmax - onehot),
and the gradients w.r.t. hidden and weight are accumulated right away (weight gradient in fp32). The backward
only scales the stored gradients by the incoming scalar. Peak extra memory is one chunk of logits plus the
gradient buffers, independent of the sequence length.

Signature matches the model's naive reference ``cross_entropy_sum(hidden, weight, labels) -> (sum, count)``:
``hidden`` (N..., H), ``weight`` (V, H), ``labels`` (N...) already shifted; returns the fp32 loss *sum* and the
int64 count of supervised tokens, so the distributed loss can normalise by the global count. A rank whose labels
are all ignored returns (0.0, 0) and zero gradients, never NaN.
"""

from __future__ import annotations

import torch

from longvila.constants import IGNORE_INDEX

from ._triton import check_launchable, interpreting, next_power_of_2, tl, triton, triton_usable


@triton.jit
def _ce_chunk_kernel(
    LOGITS, GRAD, LABELS, LOSS,
    stride_l, stride_g, V,
    BLOCK_V: tl.constexpr,
):
    """One row: loss = logsumexp(x) - x[label]; GRAD = softmax(x) - onehot(label). GRAD may alias LOGITS."""
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row).to(tl.int32)
    x_row = LOGITS + row * stride_l
    g_row = GRAD + row * stride_g
    cols = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        idx = start + cols
        x = tl.load(x_row + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    m_row = tl.max(m, 0)
    s_row = tl.sum(s * tl.exp(m - m_row), 0)
    lse = m_row + tl.log(s_row)
    target = tl.load(x_row + label).to(tl.float32)
    tl.store(LOSS + row, lse - target)
    for start in range(0, V, BLOCK_V):
        idx = start + cols
        x = tl.load(x_row + idx, mask=idx < V, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) - tl.where(idx == label, 1.0, 0.0)
        tl.store(g_row + idx, g.to(GRAD.dtype.element_ty), mask=idx < V)


def _ce_chunk_triton(logits, labels, grad):
    rows, v = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    block = min(next_power_of_2(v), 32 if interpreting() else 8192)
    _ce_chunk_kernel[(rows,)](logits, grad, labels, loss, logits.stride(0), grad.stride(0), v, BLOCK_V=block,
                              num_warps=1 if interpreting() else 16)
    return loss


def _ce_chunk_torch(logits, labels, grad):
    """Same contract as the Triton kernel, in torch (used where Triton cannot run).

    The softmax is formed in place in ``logits`` (no longer needed once the loss is read), so a chunk costs one
    logits buffer, not two."""
    lse = torch.logsumexp(logits, dim=-1)
    loss = lse - logits.gather(1, labels[:, None]).squeeze(1)
    probs = logits.sub_(lse[:, None]).exp_()
    probs[torch.arange(labels.numel(), device=labels.device), labels] -= 1.0
    if grad is not probs:
        grad.copy_(probs)
    return loss


def fp32_output_gemm(a: torch.Tensor) -> bool:
    """Whether ``a``'s GEMMs can write fp32 directly (cuBLAS' fp32 C from 16-bit A/B: no bf16 rounding of the
    logits, no fp32 temporary): 16-bit CUDA tensors on a torch with the ``out_dtype`` overloads of mm and addmm
    (torch 2.8+; CPU has none). Decided from the op schema, not by trying the call: a try/except around it also
    caught ``torch.OutOfMemoryError`` (a RuntimeError) and silently fell back to the path that allocates more."""
    return (a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and "dtype" in torch.ops.aten.mm.overloads()
            and "dtype_out" in torch.ops.aten.addmm.overloads())


def _mm_fp32(a, b):
    """a @ b with an fp32 result (fp32 inputs: the plain GEMM)."""
    if a.dtype == torch.float32:
        return a @ b
    if fp32_output_gemm(a):
        return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).float()


def _addmm_fp32_(acc, a, b):
    """acc += a @ b with acc fp32: in place in cuBLAS (fp32 C, 16-bit A/B) where available, no V x H temporary."""
    if a.dtype == torch.float32:
        return acc.addmm_(a, b)
    if fp32_output_gemm(a):
        return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    return acc.add_((a @ b).float())


def default_chunk_size(rows: int, vocab: int, hidden: int) -> int:
    """Liger's rule (a logits chunk about as large as the hidden states), as a power of two in [256, 4096]."""
    ratio = max(1, -(-vocab // hidden))
    return max(1, min(rows, max(256, min(4096, next_power_of_2(-(-rows // ratio))))))


def _fused_forward(hidden, weight, labels, ignore_index, chunk_size, use_triton, need_dh, need_dw):
    if hidden.shape[-1] != weight.shape[1] or weight.dim() != 2:
        raise ValueError(f"hidden (..., {hidden.shape[-1]}) does not match weight {tuple(weight.shape)}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match hidden's leading dims {tuple(hidden.shape[:-1])}")
    # Mixed dtypes (e.g. fp32 hidden from an fp32 norm, bf16 lm_head) compute in the weight's dtype, as autocast
    # would for the linear layer; the hidden gradient is cast back at the end.
    h = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)
    flat = labels.reshape(-1).to(h.device)
    vocab = weight.shape[0]
    valid = flat != ignore_index
    idx = valid.nonzero().squeeze(1)  # one host sync: the number of supervised rows
    rows = idx.numel()
    count = torch.tensor(rows, dtype=torch.int64, device=h.device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.zeros_like(h) if need_dh else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
    if rows == 0:
        return loss_sum, count, (grad_h.to(hidden.dtype) if need_dh else None), (
            grad_w.to(weight.dtype) if need_dw else None)
    targets = flat.index_select(0, idx)
    bad = (targets < 0) | (targets >= vocab)
    if bool(bad.any()):
        raise ValueError(f"labels must be in [0, {vocab}) or {ignore_index}, got {targets[bad][:5].tolist()}")
    if use_triton is None:
        use_triton = triton_usable(h, weight)
    if use_triton:
        check_launchable(h, weight)
    chunk = chunk_size or default_chunk_size(rows, vocab, h.shape[1])
    need_grad = need_dh or need_dw
    for start in range(0, rows, chunk):
        sel = idx[start:start + chunk]
        h_c = h.index_select(0, sel)
        y_c = targets[start:start + chunk].contiguous()
        logits = _mm_fp32(h_c, weight.t())
        # The gradient of the logits goes straight into the GEMM dtype (in place when that is fp32).
        grad = logits if (not need_grad or h.dtype == torch.float32) else torch.empty_like(logits, dtype=h.dtype)
        loss = (_ce_chunk_triton if use_triton else _ce_chunk_torch)(logits, y_c, grad)
        loss_sum += loss.sum()
        if need_dh:
            grad_h.index_copy_(0, sel, grad @ weight)
        if need_dw:
            _addmm_fp32_(grad_w, grad.t(), h_c)
        del logits, grad
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    if grad_h is not None:
        grad_h = grad_h.to(hidden.dtype)
    return loss_sum, count, grad_h, grad_w


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """``apply(hidden, weight, labels, ignore_index, chunk_size, use_triton) -> (loss_sum, count)``.

    Gradients are computed during the forward (chunk by chunk) and only scaled in the backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index=IGNORE_INDEX, chunk_size=None, use_triton=None):
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss_sum, count, grad_h, grad_w = _fused_forward(
            hidden, weight, labels, ignore_index, chunk_size, use_triton, need_dh, need_dw
        )
        ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_shape = hidden.shape
        ctx.mark_non_differentiable(count)
        return loss_sum, count

    @staticmethod
    def backward(ctx, d_loss, _d_count):
        grad_h, grad_w = ctx.saved_tensors
        dh = dw = None
        if grad_h is not None:
            dh = (grad_h * d_loss.to(grad_h.dtype)).reshape(ctx.hidden_shape)
        if grad_w is not None:
            dw = grad_w * d_loss.to(grad_w.dtype)
        return dh, dw, None, None, None, None


def fused_linear_cross_entropy(hidden, weight, labels, ignore_index: int = IGNORE_INDEX, *, chunk_size=None,
                               use_triton=None):
    """Chunked ``sum(CE(hidden @ weight.T, labels))`` and the count of supervised tokens.

    ``use_triton=None`` picks the Triton CE kernel where it can run (CUDA, or TRITON_INTERPRET=1) and the torch
    implementation of the same chunked algorithm elsewhere; both keep the memory bound.
    """
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        loss_sum, count, _, _ = _fused_forward(hidden, weight, labels, ignore_index, chunk_size, use_triton,
                                               need_dh=False, need_dw=False)
        return loss_sum, count
    return FusedLinearCrossEntropyFunction.apply(hidden, weight, labels, ignore_index, chunk_size, use_triton)


def cross_entropy_sum(hidden, weight, labels):
    """Same signature as the model's naive ``cross_entropy_sum``; a drop-in ``loss_fn`` for ``--fused_kernels``."""
    return fused_linear_cross_entropy(hidden, weight, labels)
