"""A deterministic, resumable stream of micro-batches for one data-parallel rank.

Why not a plain DataLoader: resume must continue at the exact sample where the run stopped, bad samples must be
skipped *and counted* without ever producing an empty micro-batch (DeepSpeed expects exactly
``gradient_accumulation_steps`` forward/backward calls per step), and sequence-parallel ranks of one group must see
the same samples. The stream owns the epoch order, its cursor and the skip count, and all three go into the
checkpoint.

A dataset may be a mixture of sources (``longvila/data/mixture.py``): it then says which indices an epoch draws
(``epoch_indices``, with repeats) and where each index comes from (``source_of``), and the stream counts, per
source, the samples it handed out (``samples_per_source``) and the bad ones it skipped (``skipped_per_source``,
which sums to ``num_skipped``). Both are cumulative over the run and go into the checkpoint. They count draws, so
the few samples repeated to give every DP rank the same number per epoch count as often as they are trained on.
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
        self.sources: tuple[str, ...] = tuple(getattr(dataset, "source_names", ()))
        self.samples_per_source = dict.fromkeys(self.sources, 0)
        malformed = getattr(dataset, "malformed_per_source", {}) if dp_rank == 0 else {}
        self.skipped_per_source = {name: int(malformed.get(name, 0)) for name in self.sources}
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        """This rank's share of a seeded permutation, wrapped so every DP rank gets the same count."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        epoch_indices = getattr(self.dataset, "epoch_indices", None)
        if epoch_indices is None:
            order = torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            drawn = torch.as_tensor(epoch_indices(epoch), dtype=torch.long)
            order = drawn[torch.randperm(len(drawn), generator=generator)].tolist()
        self._epoch_size = size = len(order)  # draws per epoch before the DP wrap (the all-bad threshold)
        while len(order) % self.dp_size:
            order.append(order[len(order) % size])
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
            index = self._next_index()
            sample = self.dataset[index]
            source = self.dataset.source_of(index) if self.sources else None
            if sample is None:
                self.num_skipped += 1
                if source is not None:
                    self.skipped_per_source[source] += 1
                consecutive_bad += 1
                if consecutive_bad >= self._epoch_size:
                    raise DataError(
                        f"every sample of {self.name} failed to load ({consecutive_bad} in a row); "
                        "check the media paths and --media_root"
                    )
                continue
            consecutive_bad = 0
            if source is not None:
                self.samples_per_source[source] += 1
            samples.append(sample)
        return self.collate_fn(samples)

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "cursor": self.cursor, "num_skipped": self.num_skipped}
        if self.sources:
            state.update(samples_per_source=dict(self.samples_per_source),
                         skipped_per_source=dict(self.skipped_per_source), draws_per_epoch=self._epoch_size)
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = tuple(state.get("samples_per_source", {}))
        if saved != self.sources:
            raise DataError(f"the checkpoint was trained on sources {list(saved) or 'one dataset'}, this run has "
                            f"{list(self.sources) or 'one dataset'}; resume with the same data")
        if self.sources and state["draws_per_epoch"] != self._epoch_size:
            raise DataError(f"the checkpoint's mixture drew {state['draws_per_epoch']} samples per epoch, this "
                            f"run's draws {self._epoch_size}; resume with the same datasets and weights")
        self.epoch, self.cursor, self.num_skipped = state["epoch"], state["cursor"], state["num_skipped"]
        if self.sources:
            self.samples_per_source = dict(state["samples_per_source"])
            self.skipped_per_source = dict(state["skipped_per_source"])
        self._order = self._epoch_order(self.epoch)
