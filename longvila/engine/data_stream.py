"""A deterministic, resumable stream of micro-batches for one data-parallel rank.

Why not a plain DataLoader: resume must continue at the exact sample where the run stopped, bad samples must be
skipped *and counted* without ever producing an empty micro-batch (DeepSpeed expects exactly
``gradient_accumulation_steps`` forward/backward calls per step), and sequence-parallel ranks of one group must see
the same samples. The stream owns the epoch order, its cursor and the skip count, and all three go into the
checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


class DataError(RuntimeError):
    """The dataset cannot feed training (for example: every sample is bad)."""


class MicroBatchStream:
    def __init__(
        self,
        dataset: Sequence,
        collate_fn: Callable[[list], dict],
        batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        name: str = "dataset",
    ):
        if len(dataset) == 0:
            raise DataError(f"{name} is empty")
        self.dataset, self.collate_fn, self.batch_size = dataset, collate_fn, batch_size
        self.dp_rank, self.dp_size, self.seed, self.name = dp_rank, dp_size, seed, name
        self.epoch, self.cursor = 0, 0
        # Records rejected while loading (malformed JSON lines) count as skipped too; every rank loads the same
        # file, so only rank 0 reports them and the all-rank sum stays right.
        self.num_skipped = int(getattr(dataset, "num_malformed", 0)) if dp_rank == 0 else 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        """This rank's share of a seeded permutation, wrapped so every DP rank gets the same count."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        while len(order) % self.dp_size:
            order.append(order[len(order) % len(self.dataset)])
        return order[self.dp_rank :: self.dp_size]

    @property
    def samples_per_epoch(self) -> int:
        return len(self._order)

    def _next_index(self) -> int:
        if self.cursor >= len(self._order):
            self.epoch += 1
            self.cursor = 0
            self._order = self._epoch_order(self.epoch)
        index = self._order[self.cursor]
        self.cursor += 1
        return index

    def next_batch(self) -> dict[str, Any]:
        """Collate the next ``batch_size`` good samples, skipping (and counting) bad ones."""
        samples, consecutive_bad = [], 0
        while len(samples) < self.batch_size:
            sample = self.dataset[self._next_index()]
            if sample is None:
                self.num_skipped += 1
                consecutive_bad += 1
                if consecutive_bad >= len(self.dataset):
                    raise DataError(
                        f"every sample of {self.name} failed to load ({consecutive_bad} in a row); "
                        "check the media paths and --media_root"
                    )
                continue
            consecutive_bad = 0
            samples.append(sample)
        return self.collate_fn(samples)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "num_skipped": self.num_skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor, self.num_skipped = state["epoch"], state["cursor"], state["num_skipped"]
        self._order = self._epoch_order(self.epoch)
