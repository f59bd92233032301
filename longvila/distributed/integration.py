"""Wire sequence parallelism and the attention backend into a :class:`~longvila.model.vlm.VILAModel`.

The model exposes three hooks and this module fills them, so no model file is patched:

* the attention dispatcher (``VILAModel.set_attention``): every decoder layer's attention goes through an
  :class:`~longvila.distributed.attention.AttentionDispatcher` for this layout (Ulysses, ring, 2D, or local
  attention on the chosen block backend);
* ``model.sequence_sharder``: after the global label shift, pad to 2*SP and take this rank's zigzag shard of
  embeddings, labels, positions and (global) document ids;
* ``model.frame_encoder`` (MM-SP): each SP rank encodes 1/SP of the frames, then the features are all-gathered.

It returns the run's :class:`~longvila.distributed.mesh.ParallelDims`: which samples this rank reads and over which
group the supervised tokens of a step are counted (SP ranks of one group share a batch, so they must not be double
counted).
"""

from __future__ import annotations

from dataclasses import replace

import torch.distributed as dist

from .attention import AttentionDispatcher
from .mesh import ParallelDims, ProcessGroups, SequenceParallelConfig, check_heads
from .mmsp import make_sharded_frame_encoder
from .sharding import shard_sequence


class SequenceSharder:
    """``model.sequence_sharder``: zigzag (or contiguous) shard of the shifted full sequence."""

    def __init__(self, cfg: SequenceParallelConfig, groups: ProcessGroups):
        self.cfg, self.groups = cfg, groups

    def __call__(self, seq):
        """Shards the embeddings, or the token ids of a text-only sequence (embedded after sharding)."""
        values = "inputs_embeds" if seq.inputs_embeds is not None else "token_ids"
        shard = shard_sequence(
            {values: getattr(seq, values), "labels": seq.labels, "position_ids": seq.position_ids,
             "attention_mask": seq.attention_mask},
            self.cfg, self.groups,
        )
        return replace(seq, **{values: shard[values]}, labels=shard["labels"], position_ids=shard["position_ids"],
                       attention_mask=shard["attention_mask"], segment_ids=shard["segment_ids"])


def install_parallelism(model, sp: SequenceParallelConfig, attn_backend: str = "torch") -> ParallelDims:
    """Build the device mesh, give ``model`` its attention dispatcher and sharding hooks, and return the run's
    :class:`ParallelDims`. ``attn_backend`` is a resolved block-backend name ("torch", "triton", "flash_attn")."""
    dims = ParallelDims.build(sp, dist.get_world_size(), dist.get_rank())
    model.set_attention(AttentionDispatcher(sp, dims.groups, attn_backend))
    if sp.enabled:
        llm_config = model.llm.config
        check_heads(llm_config.num_attention_heads, llm_config.num_key_value_heads, sp.ulysses_size)
        model.sequence_sharder = SequenceSharder(sp, dims.groups)
        model.frame_encoder = make_sharded_frame_encoder(model.encode_frames, dims.groups.sp_group)
    return dims
