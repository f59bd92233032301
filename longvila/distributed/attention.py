"""The one entry point the model calls: sequence-parallel attention by configuration, plus the HF hook.

``sequence_parallel_attention`` dispatches on :class:`SequenceParallelConfig`:

* sp_size 1                -> local block attention;
* ring_size 1 (pure Ulysses)-> :func:`ulysses_attention` over the ulysses group;
* ulysses 1 (pure ring)    -> :func:`ring_attention` (zigzag or plain) over the ring group;
* otherwise (2D)           -> :func:`usp_attention`.

q/k/v arrive as the local (B, H, S_local, D) shards in the order produced by
:func:`longvila.distributed.sharding.shard_sequence`; ``segment_ids`` is the local shard of the GLOBAL segment ids
from the same call. The result is (B, S_local, H, D), like HF attention functions return.

Integration with transformers goes through ``AttentionInterface`` (no patched model files):
:func:`make_hf_attention` builds a function with HF's attention signature and :func:`register_hf_attention`
registers it. The model then passes ``segment_ids=`` as a forward kwarg; transformers forwards unknown kwargs down
to the attention function (and through gradient-checkpointed layers), so every layer and every recompute sees the
same ids and runs the same collectives.
"""

from __future__ import annotations

import torch

from .block_attention import block_attention
from .mesh import ProcessGroups, SequenceParallelConfig
from .ring import ring_attention
from .sharding import segment_ids_from_position_ids
from .ulysses import ulysses_attention
from .usp import usp_attention


def sequence_parallel_attention(q, k, v, *, scale: float, segment_ids=None, cfg: SequenceParallelConfig,
                                groups: ProcessGroups | None, backend="torch", causal: bool = True) -> torch.Tensor:
    """Attention over the full (sharded) sequence; q/k/v (B, H, S_local, D) -> (B, S_local, H, D)."""
    if not cfg.enabled:
        out = block_attention(q, k, v, causal=causal, scale=scale, q_segment_ids=segment_ids,
                              k_segment_ids=segment_ids, backend=backend)
    elif groups is None:
        raise ValueError(f"sequence parallel size {cfg.sp_size} needs process groups from build_mesh")
    elif cfg.ring_size == 1:
        out = ulysses_attention(q, k, v, scale=scale, causal=causal, segment_ids_local=segment_ids,
                                group=groups.ulysses_group, num_pieces=cfg.num_pieces, backend=backend)
    elif cfg.ulysses_size == 1:
        out = ring_attention(q, k, v, scale=scale, causal=causal, segment_ids=segment_ids, group=groups.ring_group,
                             zigzag=cfg.zigzag, backend=backend)
    else:
        out = usp_attention(q, k, v, scale=scale, causal=causal, segment_ids_local=segment_ids,
                            ulysses_group=groups.ulysses_group, ring_group=groups.ring_group, zigzag=cfg.zigzag,
                            backend=backend)
    return out.transpose(1, 2)


def make_hf_attention(cfg: SequenceParallelConfig, groups: ProcessGroups | None, backend="torch"):
    """A transformers attention function ``(module, q, k, v, attention_mask, scaling, dropout, **kw)``.

    Reads ``segment_ids`` (global ids, local shard) from the kwargs. Without SP it may instead derive them from
    the ``position_ids`` kwarg (positions restart at 0 per document). Under SP the local position ids cannot tell
    where documents start, so ``segment_ids`` is required. ``attention_mask`` must be None: the model passes
    ``{"full_attention": None}`` so no O(S^2) mask is built; padding is a separate document at the end.
    """

    def longvila_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                           segment_ids=None, position_ids=None, sliding_window=None, **_kwargs):
        if attention_mask is not None:
            raise ValueError("longvila attention takes no attention_mask tensor; pass "
                             "attention_mask={'full_attention': None} and segment_ids instead")
        if dropout:
            raise ValueError(f"longvila attention does not implement attention dropout (got {dropout})")
        if sliding_window is not None:
            raise ValueError(f"longvila attention does not implement sliding windows (got {sliding_window})")
        if segment_ids is None:
            if cfg.enabled:
                raise ValueError("sequence-parallel attention needs the global segment_ids kwarg from shard_sequence")
            if position_ids is not None:
                pos = position_ids if position_ids.dim() == 2 else position_ids.unsqueeze(0)
                segment_ids = segment_ids_from_position_ids(pos).expand(query.shape[0], -1)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        causal = getattr(module, "is_causal", True)
        out = sequence_parallel_attention(query, key, value, scale=scale, segment_ids=segment_ids, cfg=cfg,
                                          groups=groups, backend=backend, causal=causal)
        return out, None

    return longvila_attention


def register_hf_attention(cfg: SequenceParallelConfig, groups: ProcessGroups | None, backend="torch",
                          name: str = "longvila") -> str:
    """Register :func:`make_hf_attention` with ``transformers.AttentionInterface`` under ``name``; return it.

    Set ``model.config._attn_implementation = name`` (or pass ``attn_implementation=name``) afterwards.
    Registering again replaces the function (e.g. after building a new mesh).
    """
    from transformers import AttentionInterface

    AttentionInterface.register(name, make_hf_attention(cfg, groups, backend))
    return name
