"""Loss reduction over DP x SP x gradient accumulation: sum of token CE / global count of supervised tokens.

Why not a per-rank mean: ranks (and micro-batches) hold different numbers of supervised tokens, so averaging means
weights tokens unequally (torchtitan #1842, Megatron #673). Instead every rank returns a CE *sum* and the count;
the optimizer step divides by the GLOBAL count.

DeepSpeed scaling. ``engine.backward(loss)`` divides the loss by ``gradient_accumulation_steps`` (its default
``scale_wrt_gas=True``) and the gradient all-reduce AVERAGES over its data-parallel world (every rank, SP ranks
included, must be in that world; SP ranks are not a separate model-parallel group). So the loss handed to
DeepSpeed for one micro-batch is

    loss = loss_sum_local * world_size * grad_accum_steps / global_count_of_the_step

and after DeepSpeed's 1/GAS and 1/world the summed gradients equal the single-process gradient of
Σ CE / global_count. ``global_count`` must be the count of the whole optimizer step (all micro-batches, all
ranks), so the engine counts labels for all its micro-batches before the first backward.

A rank (or a whole step) with no supervised tokens contributes exactly 0: its loss_sum is 0 and the count is
clamped to 1, so no 0/0 NaN enters the all-reduce (Megatron #1764).

The trainer (``longvila/engine/trainer.py``) counts with ``StepReductions.sum_over_replicas`` and calls
:func:`normalised_loss` and :func:`mean_loss` from here.
"""

from __future__ import annotations

import torch


def normalised_loss(loss_sum: torch.Tensor, global_count: int, world_size: int,
                    grad_accum_steps: int = 1) -> torch.Tensor:
    """The loss to call ``engine.backward`` on (see the module doc for the scale).

    fp32 (fp64 stays fp64); exactly 0 when the rank has no supervised token.
    """
    if world_size < 1 or grad_accum_steps < 1:
        raise ValueError(f"world_size and grad_accum_steps must be positive, got {world_size}, {grad_accum_steps}")
    if global_count < 0:
        raise ValueError(f"global token count must be non-negative, got {global_count}")
    scale = world_size * grad_accum_steps / max(int(global_count), 1)
    return (loss_sum if loss_sum.dtype == torch.float64 else loss_sum.float()) * scale


def mean_loss(loss_sum: float, global_count: float) -> float:
    """Σ CE / global count, the value single-process training would report (0 for a step with no target)."""
    return loss_sum / max(global_count, 1)
