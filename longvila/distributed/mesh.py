"""Sequence-parallel configuration and the DP x ring x ulysses device mesh.

Layout (global rank g):  g = dp_rank * SP + ring_rank * U + ulysses_rank,  SP = R * U.

* Ulysses groups are contiguous ranks: the all-to-all is the bandwidth-hungry collective, so it stays on the
  intra-node links (NVLink) when ranks are numbered node by node.
* Ring groups are strided by U: ring P2P traffic is point-to-point and overlapped with compute, so it tolerates
  the slower inter-node links.
* An SP group is a contiguous block of SP ranks; DP groups are strided by SP.

``sp_rank = ring_rank * U + ulysses_rank`` is the rank's position in its SP group, and the sequence sharding in
:mod:`longvila.distributed.sharding` is defined in terms of (ring_rank, ulysses_rank).

Every configuration problem raises a one-line ``ValueError`` naming the bad value *before* any compute, so a bad
recipe fails at start-up instead of deadlocking in the first collective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist

RING_TYPES = ("zigzag_ring", "ring")


@dataclass(frozen=True)
class SequenceParallelConfig:
    """VILA's ``--seq_parallel_size / --seq_parallel_ring_size / --seq_parallel_ring_type`` triple.

    ``sp_size`` is the total sequence-parallel degree, ``ring_size`` the ring degree, and the ulysses degree is
    ``sp_size // ring_size``. ``ring_type`` chooses the sequence layout: ``zigzag_ring`` (balanced causal work)
    or ``ring`` (plain contiguous chunks).
    """

    sp_size: int = 1
    ring_size: int = 1
    ring_type: str = "zigzag_ring"

    def __post_init__(self) -> None:
        if not isinstance(self.sp_size, int) or self.sp_size < 1:
            raise ValueError(f"--seq_parallel_size must be a positive integer, got {self.sp_size!r}")
        if not isinstance(self.ring_size, int) or self.ring_size < 1:
            raise ValueError(f"--seq_parallel_ring_size must be a positive integer, got {self.ring_size!r}")
        if self.sp_size % self.ring_size != 0:
            raise ValueError(
                f"--seq_parallel_size {self.sp_size} is not divisible by --seq_parallel_ring_size {self.ring_size} "
                f"(ulysses degree = size / ring size must be an integer)"
            )
        if self.ring_type not in RING_TYPES:
            raise ValueError(f"--seq_parallel_ring_type must be one of {', '.join(RING_TYPES)}, got {self.ring_type!r}")

    @classmethod
    def from_args(cls, args) -> "SequenceParallelConfig":
        """Build from any object with VILA's ``seq_parallel_size/_ring_size/_ring_type`` attributes."""
        return cls(
            sp_size=int(getattr(args, "seq_parallel_size", 1)),
            ring_size=int(getattr(args, "seq_parallel_ring_size", 1)),
            ring_type=str(getattr(args, "seq_parallel_ring_type", "zigzag_ring")),
        )

    @property
    def ulysses_size(self) -> int:
        return self.sp_size // self.ring_size

    @property
    def enabled(self) -> bool:
        return self.sp_size > 1

    @property
    def zigzag(self) -> bool:
        """True when the sequence uses the zigzag layout (2R chunks; ring rank r holds r and 2R-1-r)."""
        return self.ring_type == "zigzag_ring"

    @property
    def num_pieces(self) -> int:
        """Number of contiguous sequence pieces each SP rank holds (2 for zigzag, 1 for plain)."""
        return 2 if self.zigzag else 1

    @property
    def pad_multiple(self) -> int:
        """Global sequence length must be a multiple of this (2 x SP, as zigzag cuts 2R chunks of U slices)."""
        return 2 * self.sp_size if self.enabled else 1

    def check_world(self, world_size: int) -> int:
        """Validate against the world size and return the DP degree."""
        if world_size % self.sp_size != 0:
            raise ValueError(
                f"world size {world_size} is not divisible by --seq_parallel_size {self.sp_size}"
            )
        return world_size // self.sp_size


def check_heads(num_q_heads: int, num_kv_heads: int, ulysses_size: int) -> int:
    """Check that attention heads can be split over ``ulysses_size`` ranks; return the kv replication factor.

    q heads must divide by the ulysses degree (no uneven path: a clear error instead of a silent wrong split).
    kv heads either divide by it (factor 1) or, when fewer kv heads than ranks, are replicated
    ``ulysses_size // num_kv_heads`` times (requires ``ulysses_size % num_kv_heads == 0``); their gradients are
    summed back by autograd. Example: Qwen2-7B (28 q / 4 kv) under pure Ulysses with SP=14 splits its q heads
    (2 per rank) but not its 4 kv heads (4 % 14 and 14 % 4 are both non-zero), so it is rejected here.
    """
    if num_q_heads < 1 or num_kv_heads < 1 or ulysses_size < 1:
        raise ValueError(
            f"head counts and ulysses degree must be positive, got q={num_q_heads} kv={num_kv_heads} "
            f"ulysses={ulysses_size}"
        )
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(f"num q heads {num_q_heads} is not a multiple of num kv heads {num_kv_heads}")
    if num_q_heads % ulysses_size != 0:
        raise ValueError(
            f"num q heads {num_q_heads} is not divisible by the ulysses degree {ulysses_size} "
            f"(seq_parallel_size / seq_parallel_ring_size); use a ring size that makes it divide"
        )
    if num_kv_heads % ulysses_size == 0:
        return 1
    if ulysses_size % num_kv_heads == 0:
        return ulysses_size // num_kv_heads
    raise ValueError(
        f"num kv heads {num_kv_heads} neither divides by nor divides the ulysses degree {ulysses_size}; "
        f"use a ring size that makes them compatible"
    )


class MeshCoordinates:
    """A rank's data-parallel and sequence-parallel coordinates, ``g = dp_rank * SP + sp_rank`` (module doc).

    Shared by :class:`ProcessGroups` and :class:`ParallelDims`; a subclass supplies ``world_size``, ``rank`` and
    ``sp_config``.
    """

    world_size: int
    rank: int

    @property
    def sp_config(self) -> SequenceParallelConfig:
        raise NotImplementedError

    # Every coordinate is an int derived from the rank: g = dp_rank * SP + sp_rank, sp_rank = ring_rank * U + u.
    dp_size = property(lambda self: self.world_size // self.sp_config.sp_size)
    dp_rank = property(lambda self: self.rank // self.sp_config.sp_size)
    sp_rank = property(lambda self: self.rank % self.sp_config.sp_size)
    ring_rank = property(lambda self: self.sp_rank // self.sp_config.ulysses_size)
    ulysses_rank = property(lambda self: self.sp_rank % self.sp_config.ulysses_size)


@dataclass
class ProcessGroups(MeshCoordinates):
    """The process groups and this rank's coordinates in the DP x ring x ulysses mesh.

    A group is ``None`` only when torch.distributed is not initialised (single process, all sizes 1).
    ``*_ranks`` are the global ranks of this rank's group, in group-rank order.
    """

    cfg: SequenceParallelConfig
    world_size: int
    rank: int
    dp_group: dist.ProcessGroup | None
    sp_group: dist.ProcessGroup | None
    ring_group: dist.ProcessGroup | None
    ulysses_group: dist.ProcessGroup | None
    dp_ranks: list[int] = field(default_factory=list)
    sp_ranks: list[int] = field(default_factory=list)
    ring_ranks: list[int] = field(default_factory=list)
    ulysses_ranks: list[int] = field(default_factory=list)

    @property
    def sp_config(self) -> SequenceParallelConfig:
        return self.cfg


@dataclass(frozen=True)
class ParallelDims(MeshCoordinates):
    """The parallel layout of one run in one place: world, data-parallel and sequence-parallel degrees and ranks,
    and the process groups (built only when SP > 1). Stages, evaluations and the trainer all read it.

    Two views name what they are for, because SP ranks share a batch and mixing them up multiplies counts by SP:

    * :attr:`batch_shard` says which batch this rank reads: ``(index, count)`` of the global batch's DP shards;
      the SP ranks of one group read the same one.
    * :attr:`count_group` is the group over which per-batch counts (supervised tokens, skipped samples) are
      summed: one rank per SP group, i.e. the DP group (None = the world, when SP is 1).
    """

    world_size: int
    rank: int
    sp: SequenceParallelConfig
    groups: ProcessGroups | None = None

    @classmethod
    def build(cls, sp: SequenceParallelConfig, world_size: int, rank: int) -> "ParallelDims":
        """Validate ``sp`` against the world and create its groups (every rank must call this together)."""
        sp.check_world(world_size)
        return cls(world_size, rank, sp, build_mesh(sp) if sp.enabled else None)

    @property
    def sp_config(self) -> SequenceParallelConfig:
        return self.sp

    @property
    def batch_shard(self) -> tuple[int, int]:
        return self.dp_rank, self.dp_size

    @property
    def count_group(self) -> dist.ProcessGroup | None:
        return self.groups.dp_group if self.groups is not None else None


def mesh_ranks(cfg: SequenceParallelConfig, world_size: int) -> dict[str, list[list[int]]]:
    """All groups of the mesh as lists of global ranks (pure function; what :func:`build_mesh` creates)."""
    dp = cfg.check_world(world_size)
    sp, ring, uly = cfg.sp_size, cfg.ring_size, cfg.ulysses_size
    return {
        "sp": [[d * sp + s for s in range(sp)] for d in range(dp)],
        "ulysses": [[d * sp + r * uly + u for u in range(uly)] for d in range(dp) for r in range(ring)],
        "ring": [[d * sp + r * uly + u for r in range(ring)] for d in range(dp) for u in range(uly)],
        "dp": [[d * sp + s for d in range(dp)] for s in range(sp)],
    }


def build_mesh(cfg: SequenceParallelConfig) -> ProcessGroups:
    """Create the DP / SP / ring / ulysses process groups (collective: every rank must call it).

    ``dist.new_group`` is itself collective, so every rank creates every group, in the same order, and keeps the
    one it belongs to. Without an initialised process group this returns a single-process mesh (sp_size 1).
    """
    if not dist.is_available() or not dist.is_initialized():
        cfg.check_world(1)
        return ProcessGroups(cfg, 1, 0, None, None, None, None, [0], [0], [0], [0])
    world_size, rank = dist.get_world_size(), dist.get_rank()
    layout = mesh_ranks(cfg, world_size)
    mine: dict[str, tuple[object, list[int]]] = {}
    for kind in ("dp", "sp", "ring", "ulysses"):
        for ranks in layout[kind]:
            group = dist.new_group(ranks)
            if rank in ranks:
                mine[kind] = (group, ranks)
    return ProcessGroups(
        cfg,
        world_size,
        rank,
        dp_group=mine["dp"][0],
        sp_group=mine["sp"][0],
        ring_group=mine["ring"][0],
        ulysses_group=mine["ulysses"][0],
        dp_ranks=mine["dp"][1],
        sp_ranks=mine["sp"][1],
        ring_ranks=mine["ring"][1],
        ulysses_ranks=mine["ulysses"][1],
    )
