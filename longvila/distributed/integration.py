"""Wire sequence parallelism and the attention backend into a :class:`~longvila.model.vlm.VILAModel`.

The model exposes three hooks and this module fills them, so no model file is patched:

* the attention dispatcher (``VILAModel.set_attention``): every decoder layer's attention goes through an
  :class:`~longvila.distributed.attention.AttentionDispatcher` for this layout (Ulysses, ring, 2D, or local
  attention on the chosen block backend);
* ``model.sequence_sharder``: after the global label shift, pad to 2*SP and take this rank's zigzag shard of
  token ids, frame-feature rows, labels, positions and (global) document ids, and plan where each frame feature
  this rank encodes must go (MM-SP: each SP rank encodes 1/SP of the frames, ``longvila/distributed/media_routing.py``).

It returns the run's :class:`~longvila.distributed.mesh.ParallelDims`: which samples this rank reads and over which
group the supervised tokens of a step are counted (SP ranks of one group share a batch, so they must not be double
counted).
"""

from __future__ import annotations

from dataclasses import replace

import torch.distributed as dist

from .attention import AttentionDispatcher
from .media_routing import plan_routes
from .mesh import ParallelDims, ProcessGroups, SequenceParallelConfig, check_heads
from .sharding import pad_to_multiple, shard_sequence


class SequenceSharder:
    """``model.sequence_sharder``: zigzag (or contiguous) shard of the shifted full sequence."""

    def __init__(self, cfg: SequenceParallelConfig, groups: ProcessGroups | int, tokens_per_frame: int = 1):
        self.cfg, self.groups, self.tokens_per_frame = cfg, groups, tokens_per_frame

    def __call__(self, seq):
        """Shards token ids and feature rows (embedded after sharding), or already embedded inputs."""
        values = ["inputs_embeds"] if seq.inputs_embeds is not None else ["token_ids"]
        if seq.inputs_embeds is None and seq.feature_rows is not None:
            values.append("feature_rows")
        shard = shard_sequence(
            {**{name: getattr(seq, name) for name in values}, "labels": seq.labels, "position_ids": seq.position_ids,
             "attention_mask": seq.attention_mask},
            self.cfg, self.groups, pad_values={"feature_rows": -1},
        )
        routes = None
        if "feature_rows" in values:
            sp_rank = self.groups if isinstance(self.groups, int) else self.groups.sp_rank
            group = None if isinstance(self.groups, int) else self.groups.sp_group
            padded = pad_to_multiple(seq.feature_rows, self.cfg.pad_multiple, dim=1, value=-1)
            routes = plan_routes(padded, self.cfg, sp_rank, self.tokens_per_frame, seq.num_frames, group)
        return replace(seq, **{name: shard[name] for name in values}, labels=shard["labels"],
                       position_ids=shard["position_ids"], attention_mask=shard["attention_mask"],
                       segment_ids=shard["segment_ids"], media_routes=routes)


def install_parallelism(model, sp: SequenceParallelConfig, attn_backend="torch") -> ParallelDims:
    """Build the device mesh, give ``model`` its attention dispatcher and sharding hooks, and return the run's
    :class:`ParallelDims`. ``attn_backend`` is a block backend (an object from ``resolve_backend``, or a name)."""
    dims = ParallelDims.build(sp, dist.get_world_size(), dist.get_rank())
    model.set_attention(AttentionDispatcher(sp, dims.groups, attn_backend))
    if sp.enabled:
        llm_config = model.llm.config
        check_heads(llm_config.num_attention_heads, llm_config.num_key_value_heads, sp.ulysses_size)
        model.sequence_sharder = SequenceSharder(sp, dims.groups, model.tokens_per_frame)
    return dims
