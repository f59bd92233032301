"""2D (USP / LongVILA) attention: Ulysses inside a ring rank, ring attention across ring ranks.

Mesh: SP = R x U with ulysses groups of contiguous ranks. Under the zigzag layout, ulysses rank u of ring rank r
holds slice u of chunk r and slice u of chunk 2R-1-r (2 pieces). The Ulysses all-to-all gathers piece-major
(:func:`longvila.distributed.ulysses.seq_to_heads` with ``num_pieces=2``), so each head shard holds exactly
[chunk r, chunk 2R-1-r] — the zigzag order ring attention needs — and the ring runs on 1/U of the heads.
"""

from __future__ import annotations

from .ring import ring_attention
from .ulysses import ulysses_attention


def usp_attention(q, k, v, *, scale: float, causal: bool = True, segment_ids_local=None, ulysses_group=None,
                  ring_group=None, zigzag: bool = True, backend="torch"):
    """2D attention on local (B, H, S_local, D) shards; returns (B, H, S_local, D)."""

    def inner(qh, kh, vh, seg):
        return ring_attention(qh, kh, vh, scale=scale, causal=causal, segment_ids=seg, group=ring_group,
                              zigzag=zigzag, backend=backend)

    return ulysses_attention(q, k, v, scale=scale, causal=causal, segment_ids_local=segment_ids_local,
                             group=ulysses_group, inner_attention=inner, num_pieces=2 if zigzag else 1,
                             backend=backend)
