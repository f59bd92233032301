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

Resharding. An epoch is one seeded order of ``n`` positions; a layout of DP ranks splits the positions not yet
consumed this epoch round-robin, and each rank keeps a cursor into its share. From the states of every old rank
:func:`merge_stream_states` recovers exactly which positions the epoch has consumed, so a run resumed with another
number of data-parallel ranks (:meth:`MicroBatchStream.load_state_dict` given that merged state) continues with the
positions nobody has seen: no sample twice, none skipped. ``take_step_log`` hands out the dataset indices drawn
since the last call (trained on, and skipped as bad), for the per-step sample log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from longvila.errors import DataError


@dataclass(frozen=True)
class StreamPosition:
    """Everything the stream's checkpoint and counts depend on, at one point: a stream that loads ahead
    (``longvila/engine/prefetch.py``) reports the position after the last batch it handed out, not after the last
    one it loaded. Lists are shared, never copied: the stream replaces them, it does not edit them."""

    epoch: int
    cursor: int
    consumed_before: list
    indices: list
    positions: list
    epoch_size: int
    num_skipped: int
    samples_per_source: dict = field(default_factory=dict)
    skipped_per_source: dict = field(default_factory=dict)


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
        self.consumed_before: list[int] = []  # positions this epoch consumed under an earlier layout (resharding)
        # Records rejected while loading (malformed JSON lines) count as skipped too; every rank loads the same
        # file, so only rank 0 reports them and the all-rank sum stays right.
        self.num_skipped = int(getattr(dataset, "num_malformed", 0)) if dp_rank == 0 else 0
        self.sources: tuple[str, ...] = tuple(getattr(dataset, "source_names", ()))
        self.samples_per_source = dict.fromkeys(self.sources, 0)
        malformed = getattr(dataset, "malformed_per_source", {}) if dp_rank == 0 else {}
        self.skipped_per_source = {name: int(malformed.get(name, 0)) for name in self.sources}
        self._drawn: list[int] = []
        self._skipped: list[int] = []
        self.known_bad: set[int] = set()  # indices that loaded but failed later on some rank (treated as None)
        self._set_epoch(0)

    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.cursor, self.consumed_before, self._indices, self._positions,
                              self._epoch_size, self.num_skipped, dict(self.samples_per_source),
                              dict(self.skipped_per_source))

    def seek(self, position: StreamPosition) -> None:
        """Go back (or forward) to ``position``; the per-step log is cleared."""
        self.epoch, self.cursor, self.consumed_before = position.epoch, position.cursor, position.consumed_before
        self._indices, self._positions, self._epoch_size = position.indices, position.positions, position.epoch_size
        self.num_skipped = position.num_skipped
        self.samples_per_source = dict(position.samples_per_source)
        self.skipped_per_source = dict(position.skipped_per_source)
        self._drawn, self._skipped = [], []

    def _epoch_indices(self, epoch: int) -> list[int]:
        """The epoch's seeded order of dataset indices (a mixture draws with repeats)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        epoch_indices = getattr(self.dataset, "epoch_indices", None)
        if epoch_indices is None:
            return torch.randperm(len(self.dataset), generator=generator).tolist()
        drawn = torch.as_tensor(epoch_indices(epoch), dtype=torch.long)
        return drawn[torch.randperm(len(drawn), generator=generator)].tolist()

    def _set_epoch(self, epoch: int) -> None:
        """This rank's share of the epoch's unconsumed positions, wrapped so every DP rank gets the same count."""
        self.epoch = epoch
        self._indices = self._epoch_indices(epoch)
        self._epoch_size = len(self._indices)  # draws per epoch before the DP wrap (the all-bad threshold)
        consumed = set(self.consumed_before)
        positions = [p for p in range(self._epoch_size) if p not in consumed]
        base = len(positions)
        while len(positions) % self.dp_size:
            positions.append(positions[len(positions) % base])
        self._positions = positions[self.dp_rank :: self.dp_size]

    @property
    def samples_per_epoch(self) -> int:
        return len(self._positions)

    def _next_index(self) -> int:
        if self.cursor >= len(self._positions):
            self.cursor, self.consumed_before = 0, []
            self._set_epoch(self.epoch + 1)
        index = self._indices[self._positions[self.cursor]]
        self.cursor += 1
        return index

    def next_batch(self) -> dict[str, Any]:
        """Collate the next ``batch_size`` good samples, skipping (and counting) bad ones."""
        return self.collate_fn(self.next_samples()[0])

    def next_samples(self) -> tuple[list, list[int]]:
        """The next ``batch_size`` good samples and their dataset indices, bad ones skipped and counted."""
        samples, indices, consecutive_bad = [], [], 0
        while len(samples) < self.batch_size:
            index = self._next_index()
            sample = None if index in self.known_bad else self.dataset[index]
            source = self.dataset.source_of(index) if self.sources else None
            if sample is None:
                self.num_skipped += 1
                self._skipped.append(index)
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
            self._drawn.append(index)
            if source is not None:
                self.samples_per_source[source] += 1
            samples.append(sample)
            indices.append(index)
        return samples, indices

    def take_step_log(self) -> tuple[list[int], list[int]]:
        """Dataset indices trained on and skipped since the last call."""
        drawn, skipped = self._drawn, self._skipped
        self._drawn, self._skipped = [], []
        return drawn, skipped

    def consumed_positions(self, position: StreamPosition | None = None) -> list[int]:
        """Positions of the current epoch this rank (and earlier layouts) consumed; DP-wrap repeats excluded."""
        at = position or self.position()
        return sorted(set(at.consumed_before) | set(at.positions[: at.cursor]))

    def state_dict(self, position: StreamPosition | None = None) -> dict:
        """The checkpointed data position: now, or at ``position``."""
        at = position or self.position()
        state = {"epoch": at.epoch, "cursor": at.cursor, "num_skipped": at.num_skipped,
                 "dp_rank": self.dp_rank, "dp_size": self.dp_size, "draws_per_epoch": at.epoch_size,
                 "consumed_before": list(at.consumed_before), "consumed_positions": self.consumed_positions(at)}
        if self.sources:
            state.update(samples_per_source=dict(at.samples_per_source),
                         skipped_per_source=dict(at.skipped_per_source))
        return state

    def _check_compatible(self, state: dict) -> None:
        saved = tuple(state.get("samples_per_source", {}))
        if saved != self.sources:
            raise DataError(f"the checkpoint was trained on sources {list(saved) or 'one dataset'}, this run has "
                            f"{list(self.sources) or 'one dataset'}; resume with the same data")
        if state["draws_per_epoch"] != self._epoch_size:
            raise DataError(f"the checkpoint's data drew {state['draws_per_epoch']} samples per epoch, this "
                            f"run's draws {self._epoch_size}; resume with the same datasets and weights")

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where this rank stopped (a state of this layout), or where the whole old layout
        stopped (a state from :func:`merge_stream_states`: its consumed positions, this layout's split)."""
        self._check_compatible(state)
        self.num_skipped = state["num_skipped"]
        if self.sources:
            self.samples_per_source = dict(state["samples_per_source"])
            self.skipped_per_source = dict(state["skipped_per_source"])
        if state["dp_size"] == self.dp_size:
            self.consumed_before, self.cursor = list(state["consumed_before"]), state["cursor"]
        else:
            self.consumed_before, self.cursor = list(state["consumed_positions"]), 0
        self._set_epoch(state["epoch"])


def merge_stream_states(states: list[dict], new_dp_rank: int) -> dict:
    """One state for a rank of a new data-parallel layout, from the states of every old DP rank.

    Positions consumed this epoch are the union over old ranks; cumulative counts (skips, per-source draws) are
    summed once and given to the new DP rank 0 (metrics sum them over DP ranks). Old ranks that stopped in
    different epochs (uneven bad-sample skips near an epoch's end) cannot be merged exactly: one-line error.
    """
    by_rank = {state["dp_rank"]: state for state in states}  # SP ranks of one DP group hold the same state
    epochs = {state["epoch"] for state in by_rank.values()}
    if len(epochs) != 1:
        raise DataError(f"the checkpoint's data-parallel ranks stopped in different epochs {sorted(epochs)}; "
                        "resume it with its own number of data-parallel ranks")
    first = next(iter(by_rank.values()))
    merged = {"epoch": first["epoch"], "dp_size": None, "draws_per_epoch": first["draws_per_epoch"],
              "consumed_positions": sorted(set().union(*(s["consumed_positions"] for s in by_rank.values())))}
    owner = new_dp_rank == 0
    merged["num_skipped"] = sum(s["num_skipped"] for s in by_rank.values()) if owner else 0
    if "samples_per_source" in first:
        for key in ("samples_per_source", "skipped_per_source"):
            merged[key] = {name: (sum(s[key][name] for s in by_rank.values()) if owner else 0)
                           for name in first[key]}
    return merged
