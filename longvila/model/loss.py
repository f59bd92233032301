"""Label shifting and the reference token loss (sum + count; the engine divides by the global count).

Returning a sum and a count instead of a mean is what makes the loss correct under grad accumulation, data
parallelism and sequence parallelism: only the engine knows the global number of supervised tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from longvila.constants import IGNORE_INDEX


class LossOutput(NamedTuple):
    """A named tuple, not a dataclass: ZeRO-3 hooks only the tensors it can find in a module's output (tuples,
    lists, dicts). It must see ``loss_sum`` to fetch the LM-head weight, which the loss reads outside lm_head's
    own forward, again in the backward; with a dataclass the fp32 backward met a released (empty) weight."""

    loss_sum: torch.Tensor  # fp32 scalar, sum of token cross-entropies (0.0 with a live graph when no targets)
    num_tokens: torch.Tensor  # int64 scalar, number of supervised tokens
    # int64 scalar: real (non-padding) positions this rank processed, media expanded, after sequence sharding;
    # summed over every rank it counts each position of the global batch once (throughput metrics)
    num_positions: torch.Tensor


def shift_labels(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets, computed once on the full (unsharded) sequence.

    shifted[t] = labels[t+1]; the last position and every position whose next token starts a new document
    (position_ids[t+1] == 0) get IGNORE_INDEX, so no target crosses documents (or into padding).
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, S), got shape {tuple(labels.shape)}")
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    if position_ids is not None:
        if position_ids.shape != labels.shape:
            raise ValueError(f"position_ids shape {tuple(position_ids.shape)} != labels {tuple(labels.shape)}")
        boundary = position_ids[:, 1:] == 0
        shifted[:, :-1] = shifted[:, :-1].masked_fill(boundary, IGNORE_INDEX)
    return shifted


def count_supervised_tokens(batch) -> int:
    """The targets ``VILAModel.forward`` will train on in a collated micro-batch, counted without running it:
    the same :func:`shift_labels`, on the unexpanded text (media expansion only inserts ignored positions).

    The trainer needs this count for a whole optimizer step before the first backward (loss normalisation)."""
    return int((shift_labels(batch["labels"], batch.get("position_ids")) != IGNORE_INDEX).sum())


def lm_head_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """LM-head logits of (N, H) ``hidden`` against (V, H) ``weight`` in fp32 (fp64 for fp64 inputs, which only the
    kernel tests' oracle passes): the one arithmetic that the reference loss, teacher-forced scoring and cached
    decoding share, so that their argmaxes agree."""
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return hidden.to(dtype) @ weight.to(dtype).t()


def cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: fp32 logits of the supervised positions only, CE summed (``--loss_impl naive``, and in fp64
    the oracle of the chunked and fused losses' tests).

    hidden (..., H), weight (V, H), labels (...) already shifted. With no supervised token the result is an fp32
    0.0 that is still connected to ``hidden`` and ``weight`` (zero grads, never NaN).
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree")
    flat_labels = labels.reshape(-1)
    keep = flat_labels != IGNORE_INDEX
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    logits = lm_head_logits(h, weight)
    loss_sum = F.cross_entropy(logits, flat_labels[keep], reduction="sum")
    return loss_sum, keep.sum().to(torch.int64)


def chunked_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default training loss: same contract as ``cross_entropy_sum``, but never more than one chunk of logits.

    With a 152K vocabulary the naive loss holds the fp32 logits, their softmax and their gradient: about 1.8 MB per
    supervised token, which capped context near 30K tokens per GPU. This runs the chunked linear+CE of
    ``longvila.kernels.fused_linear_ce`` (Triton on CUDA, the same chunked algorithm in torch elsewhere; never the
    Triton interpreter, whatever ``TRITON_INTERPRET`` says, since that is only for testing kernels). Each chunk's
    gradient is formed during the forward and only scaled in the backward, so no logits are recomputed.
    """
    from longvila.kernels.fused_linear_ce import fused_linear_cross_entropy

    return fused_linear_cross_entropy(hidden, weight, labels, use_triton=None if hidden.is_cuda else False)


LOSS_FUNCTIONS = {"chunked": chunked_cross_entropy_sum, "naive": cross_entropy_sum}
"""``--loss_impl`` choices; ``naive`` (full logits) is the reference the tests compare against."""
