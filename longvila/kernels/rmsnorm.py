"""RMSNorm forward/backward in Triton, with HF ``Qwen2RMSNorm`` semantics.

HF computes ``weight * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype)``: the normalised value is
rounded to the input dtype *before* the weight multiply, and the result has dtype ``promote(weight, x)``. The
kernel reproduces exactly that rounding sequence (statistics in fp32), so it is a drop-in for the HF module.
Backward: ``dx = rstd * (dn - n * mean(dn * n))`` with ``dn = dy * w`` (fp32), and the weight gradient
``sum_rows(dy * n_rounded)`` accumulated in fp32 as per-program partial rows that are summed afterwards (no
atomics, so it is deterministic).
"""

from __future__ import annotations

import torch
from torch import nn

from ._triton import check_launchable, interpreting, next_power_of_2, tl, triton, triton_usable


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """HF ``Qwen2RMSNorm.forward`` verbatim (differentiable)."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


@triton.jit
def _rmsnorm_fwd_kernel(
    X, W, Y, RSTD,
    stride_x, stride_y, N, eps,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    var = tl.sum(x * x, 0) / N
    rstd = tl.rsqrt(var + eps)
    n = (x * rstd).to(X.dtype.element_ty).to(tl.float32)  # HF rounds to the input dtype before the weight
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (n * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rmsnorm_bwd_kernel(
    DY, X, W, RSTD, DX, DW_PARTIAL,
    stride_dy, stride_x, stride_dx, M, N, rows_per_program,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    start64 = row_start.to(tl.int64)
    x_ptr = X + start64 * stride_x + cols
    dy_ptr = DY + start64 * stride_dy + cols
    dx_ptr = DX + start64 * stride_dx + cols
    rstd_ptr = RSTD + start64
    for _ in range(row_start, row_end):
        x = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr)
        n = x * rstd
        dw += dy * n.to(X.dtype.element_ty).to(tl.float32)
        dn = dy * w
        c = tl.sum(dn * n, 0) / N
        dx = (dn - n * c) * rstd
        tl.store(dx_ptr, dx.to(DX.dtype.element_ty), mask=mask)
        x_ptr += stride_x
        dy_ptr += stride_dy
        dx_ptr += stride_dx
        rstd_ptr += 1
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=mask)


def _warps(block_n: int) -> int:
    return 1 if interpreting() else min(16, max(1, block_n // 256))


def _as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t = t.reshape(-1, n)
    return t if t.stride(-1) == 1 else t.contiguous()


def _fwd(x, weight, eps):
    if x.shape[-1] != weight.numel():
        raise ValueError(f"hidden size {x.shape[-1]} != weight size {weight.numel()}")
    check_launchable(x, weight)
    n = x.shape[-1]
    x2 = _as_rows(x, n)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m > 0:
        block = max(16, next_power_of_2(n))
        _rmsnorm_fwd_kernel[(m,)](x2, weight, y, rstd, x2.stride(0), y.stride(0), n, float(eps), BLOCK_N=block,
                                  num_warps=_warps(block))
    return y.reshape(*x.shape[:-1], n), x2, rstd


def _bwd(dy, x2, weight, rstd, x_shape, x_dtype):
    n = x2.shape[1]
    m = x2.shape[0]
    dy2 = _as_rows(dy, n)
    dx = torch.empty((m, n), dtype=x_dtype, device=x2.device)
    if m == 0:
        return dx.reshape(x_shape), torch.zeros_like(weight)
    if x2.is_cuda:
        programs = min(m, 4 * torch.cuda.get_device_properties(x2.device).multi_processor_count)
    else:
        programs = min(m, 4)
    rows_per_program = triton.cdiv(m, programs)
    programs = triton.cdiv(m, rows_per_program)
    partial = torch.empty((programs, n), dtype=torch.float32, device=x2.device)
    block = max(16, next_power_of_2(n))
    _rmsnorm_bwd_kernel[(programs,)](dy2, x2, weight, rstd, dx, partial, dy2.stride(0), x2.stride(0), dx.stride(0),
                                     m, n, rows_per_program, BLOCK_N=block, num_warps=_warps(block))
    dw = partial.sum(0).to(weight.dtype)
    return dx.reshape(x_shape), dw


class RMSNormFunction(torch.autograd.Function):
    """``RMSNormFunction.apply(x, weight, eps) -> y`` (Triton forward and backward)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, x2, rstd = _fwd(x, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = _bwd(dy, x2, weight, rstd, ctx.x_shape, ctx.x_dtype)
        return dx, (dw if ctx.needs_input_grad[1] else None), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Fused RMSNorm over the last dim (Triton); same numbers as HF's ``Qwen2RMSNorm``."""
    return RMSNormFunction.apply(x, weight, eps)


class FusedRMSNorm(nn.Module):
    """Drop-in for HF ``Qwen2RMSNorm`` / ``LlamaRMSNorm``: same ``weight`` parameter and ``variance_epsilon``.

    Uses the Triton kernel where it can run and HF's formula elsewhere (for example on CPU without the
    interpreter), so a model with fused kernels switched on still runs everywhere.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    @classmethod
    def from_module(cls, module: nn.Module) -> "FusedRMSNorm":
        """Wrap an HF RMSNorm, sharing its weight Parameter (state-dict keys stay ``...weight``)."""
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if eps is None or not hasattr(module, "weight"):
            raise ValueError(f"{type(module).__name__} has no weight/variance_epsilon; not an RMSNorm")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.weight = module.weight
        new.variance_epsilon = float(eps)
        return new

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if triton_usable(hidden_states, self.weight):
            return rms_norm(hidden_states, self.weight, self.variance_epsilon)
        return rms_norm_reference(hidden_states, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def fuse_rms_norms(model: nn.Module) -> int:
    """Swap every HF ``*RMSNorm`` submodule of ``model`` for a :class:`FusedRMSNorm` sharing its weight.

    Module surgery only (no patching of transformers' files); parameter names and state-dict keys are unchanged,
    so checkpoints load and save as before. Returns how many modules were replaced.
    """
    targets = [
        (name, module) for name, module in model.named_modules()
        if type(module).__name__.endswith("RMSNorm") and not isinstance(module, FusedRMSNorm)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FusedRMSNorm.from_module(module))
    return len(targets)
