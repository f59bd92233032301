"""Every cross-rank reduction of a training step's numbers, and the group each one runs over.

Under sequence parallelism two kinds of number exist, and mixing them up silently multiplies a metric by SP:

* **shard quantities** differ on every rank because each rank holds another piece of the sequence: the loss sum
  and the real positions after media expansion and sharding. They are summed over the whole world.
* **replica quantities** are identical on the SP ranks of one data-parallel group because those ranks read one
  batch: the supervised-token count of the unsharded batch, skipped samples, per-source draws. They are summed
  over the data-parallel group (one rank per SP group), so each sample counts once.

Peaks (memory) are the maximum over the world: the fullest rank runs out first.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


class StepReductions:
    """All-reduces for step metrics; ``dp_group`` None means the world is one data-parallel group per rank."""

    def __init__(self, device: torch.device, dp_group: Optional[dist.ProcessGroup] = None):
        self.device = device if device.type == "cuda" else torch.device("cpu")
        self.dp_group = dp_group

    def _reduce(self, values: list[float], group, op) -> list[float]:
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op, group=group)
        return tensor.tolist()

    def sum_over_shards(self, values: list[float]) -> list[float]:
        return self._reduce(values, None, dist.ReduceOp.SUM)

    def sum_over_replicas(self, values: list[float]) -> list[float]:
        return self._reduce(values, self.dp_group, dist.ReduceOp.SUM)

    def max_over_ranks(self, values: list[float]) -> list[float]:
        return self._reduce(values, None, dist.ReduceOp.MAX)
