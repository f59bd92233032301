"""Parallel layouts of a cluster and the rules that rule one out, each as a one-line reason.

The rules are the trainer's own checks (``longvila.distributed.mesh``: ``SequenceParallelConfig``, ``check_world``,
``check_heads``), so the planner rejects exactly what a launch would reject, with the same words, before anyone
books the GPUs. Two traps in LongVILA's published scripts are of this kind: SP 14 with Qwen2-7B (28 q / 4 kv heads)
under pure Ulysses, and SP degrees (14, 28) that do not divide 256 GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from longvila.distributed.mesh import SequenceParallelConfig, check_heads


@dataclass(frozen=True)
class Layout:
    """One way to lay out a cluster: ``gpus`` ranks, ``gpus_per_node`` per node, SP degree ``sp`` of which ring
    degree ``ring`` (the rest is Ulysses); data parallelism takes what SP leaves."""

    gpus: int
    gpus_per_node: int
    sp: int = 1
    ring: int = 1

    @property
    def ulysses(self) -> int:
        return self.sp // self.ring

    @property
    def dp(self) -> int:
        return self.gpus // self.sp

    @property
    def nodes(self) -> int:
        return -(-self.gpus // self.gpus_per_node)

    def describe(self) -> str:
        return f"SP {self.sp} (ulysses {self.ulysses} x ring {self.ring}) x DP {self.dp}"


def layout_problems(layout: Layout, num_q_heads: int, num_kv_heads: int, tokens: int) -> list[str]:
    """Every reason this layout cannot run this model at this length; empty when it can."""
    problems = []
    try:
        sp = SequenceParallelConfig(sp_size=layout.sp, ring_size=layout.ring)
    except ValueError as error:
        return [str(error)]
    try:
        sp.check_world(layout.gpus)
    except ValueError as error:
        problems.append(f"{error}: {layout.gpus % layout.sp} of {layout.gpus} GPUs would have no SP group")
    try:
        check_heads(num_q_heads, num_kv_heads, sp.ulysses_size)
    except ValueError as error:
        problems.append(str(error))
    if tokens < sp.pad_multiple:
        problems.append(f"{tokens} tokens cannot be split over SP {layout.sp} (needs at least {sp.pad_multiple})")
    return problems


def kv_replication(num_q_heads: int, num_kv_heads: int, ulysses: int) -> int:
    """How many times each kv head is copied so that every Ulysses rank has one (1: none), for a valid degree."""
    return check_heads(num_q_heads, num_kv_heads, ulysses)


def candidate_layouts(gpus: int, gpus_per_node: int, sp: int | None = None, ring: int | None = None) -> list[Layout]:
    """Every (SP, ring) split of ``gpus`` the search considers: SP divides the world, ring divides SP.

    A given ``sp``/``ring`` is kept even when it breaks a rule, so that the plan reports why.
    """
    sps = [sp] if sp is not None else [d for d in range(1, gpus + 1) if gpus % d == 0]
    layouts = []
    for s in sps:
        rings = [ring] if ring is not None else [d for d in range(1, s + 1) if s % d == 0]
        layouts += [Layout(gpus, gpus_per_node, s, r) for r in rings]
    return layouts
