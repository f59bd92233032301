"""Sequence parallelism for long-context training: mesh, sharding, Ulysses, ring, 2D attention, MM-SP, loss.

Everything here is tensor-level and model-agnostic; the model plugs it in through ``sequence_sharder``,
``frame_encoder`` and the attention dispatcher it is given (:class:`.attention.AttentionDispatcher`).
"""

from .attention import AttentionDispatcher, sequence_parallel_attention
from .block_attention import available_backends, block_attention, get_block_backend
from .loss import mean_loss, normalised_loss
from .lse import merge_attention, normalise_lse
from .mesh import ProcessGroups, SequenceParallelConfig, build_mesh, check_heads, mesh_ranks
from .mmsp import FrameSplit, all_gather_with_grad, encode_frames_sharded, split_frames
from .ring import ring_attention, zigzag_ring_attention
from .sharding import (
    contiguous_shard,
    gather_sequence,
    pad_to_multiple,
    sequence_indices,
    shard_sequence,
    unshard_sequence,
    zigzag_indices,
    zigzag_shard,
    zigzag_unshard,
)
from .ulysses import ulysses_attention
from .usp import usp_attention

__all__ = [
    "AttentionDispatcher",
    "FrameSplit",
    "ProcessGroups",
    "SequenceParallelConfig",
    "all_gather_with_grad",
    "available_backends",
    "block_attention",
    "build_mesh",
    "check_heads",
    "contiguous_shard",
    "encode_frames_sharded",
    "gather_sequence",
    "get_block_backend",
    "mean_loss",
    "merge_attention",
    "mesh_ranks",
    "normalise_lse",
    "normalised_loss",
    "pad_to_multiple",
    "ring_attention",
    "sequence_indices",
    "sequence_parallel_attention",
    "shard_sequence",
    "split_frames",
    "ulysses_attention",
    "unshard_sequence",
    "usp_attention",
    "zigzag_indices",
    "zigzag_ring_attention",
    "zigzag_shard",
    "zigzag_unshard",
]
