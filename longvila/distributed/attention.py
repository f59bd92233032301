"""The one entry point the model calls: sequence-parallel attention by configuration, plus the HF hook.

``sequence_parallel_attention`` dispatches on :class:`SequenceParallelConfig`:

* sp_size 1                -> local block attention;
* ring_size 1 (pure Ulysses)-> :func:`ulysses_attention` over the ulysses group;
* ulysses 1 (pure ring)    -> :func:`ring_attention` (zigzag or plain) over the ring group;
* otherwise (2D)           -> :func:`usp_attention`.

q/k/v arrive as the local (B, H, S_local, D) shards in the order produced by
:func:`longvila.distributed.sharding.shard_sequence`; ``segment_ids`` is the local shard of the GLOBAL segment ids
from the same call. The result is (B, S_local, H, D), like HF attention functions return.

Integration with transformers goes through ``AttentionInterface`` (no patched model files): an
:class:`AttentionDispatcher` has HF's attention-function signature and the model registers it under its own name.
The model passes ``segment_ids=`` as a forward kwarg; transformers forwards unknown kwargs down to the attention
function (and through gradient-checkpointed layers), so every layer and every recompute sees the same ids and runs
the same collectives.
"""

from __future__ import annotations

import torch

from .block_attention import TorchBackend, block_attention, get_block_backend
from .document_split import segment_ids as document_ids
from .local_attention import local_attention
from .mesh import ProcessGroups, SequenceParallelConfig
from .ring import ring_attention
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


class AttentionDispatcher:
    """The model's attention: called with transformers' attention-function signature, it runs local, Ulysses,
    ring or 2D attention on the chosen block backend for one parallel layout.

    One object per layout, given to the model (``VILAModel.set_attention``), so two models in one process can run
    different layouts and nothing global changes when a layout is installed. Documents: ``segment_ids`` (global
    ids, local shard) from the sequence sharder under SP; without SP they may instead come from the
    ``position_ids`` kwarg (positions restart at 0 per document). ``attention_mask`` must be None: the model passes
    ``{"full_attention": None}`` so no O(S^2) mask is built; padding is a separate document at the end.

    ``backend`` is a block-backend name or object (:func:`~longvila.distributed.block_attention.get_block_backend`),
    resolved here once; a custom backend is just an object given to the dispatcher.

    Without SP on the torch backend the local path (``longvila/distributed/local_attention.py``) runs SDPA per
    document; a KV-cache decode step (fewer queries than keys) always runs there, as cached decoding only runs
    unsharded.
    """

    def __init__(self, cfg: SequenceParallelConfig | None = None, groups: ProcessGroups | None = None,
                 backend="torch"):
        self.cfg, self.groups = cfg or SequenceParallelConfig(), groups
        self.backend = get_block_backend(backend)  # resolved once: every layer and step reuses this object

    def __call__(self, module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, segment_ids=None,
                 position_ids=None, sliding_window=None, **_kwargs):
        if attention_mask is not None:
            raise ValueError("longvila attention takes no attention_mask tensor; pass "
                             "attention_mask={'full_attention': None} and segment_ids instead")
        if dropout:
            raise ValueError(f"longvila attention does not implement attention dropout (got {dropout})")
        if sliding_window is not None:
            raise ValueError(f"longvila attention does not implement sliding windows (got {sliding_window})")
        local = not self.cfg.enabled and isinstance(self.backend, TorchBackend)
        if local or query.shape[2] != key.shape[2]:
            return local_attention(query, key, value, scale=scaling, position_ids=position_ids), None
        if segment_ids is None:
            if self.cfg.enabled:
                raise ValueError("sequence-parallel attention needs the global segment_ids kwarg from shard_sequence")
            if position_ids is not None:
                pos = position_ids if position_ids.dim() == 2 else position_ids.unsqueeze(0)
                segment_ids = document_ids(pos).expand(query.shape[0], -1)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        causal = getattr(module, "is_causal", True)
        out = sequence_parallel_attention(query, key, value, scale=scale, segment_ids=segment_ids, cfg=self.cfg,
                                          groups=self.groups, backend=self.backend, causal=causal)
        return out, None
