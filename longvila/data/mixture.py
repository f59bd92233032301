"""A weighted mixture of datasets, drawn by ``MicroBatchStream`` (``longvila/engine/data_stream.py``).

Weight semantics: a weight is *passes over the dataset per mixture epoch*, the way VILA (which concatenates the
datasets of a stage) and XTuner (``repeat_times``) users already think of it. Weight 1 is one pass, weight 2 draws
every sample twice, 0.5 draws half of them, 1.5 one pass plus half. A source contributes ``round(weight * len)``
draws per epoch (at least 1, so no source silently vanishes) and the epoch is their total. Probabilities with a
fixed epoch length were the alternative; they make "one epoch" mean nothing and leave coverage to chance, whereas
here every record is drawn ``floor(weight)`` times per epoch and the fractional part rotates through a fixed seeded
permutation of the source, so a weight-0.5 source shows its first half in epoch 0 and the other half in epoch 1:
no record is skipped for good.

Index space: the mixture's ``len`` is the total number of distinct samples, ``index -> (source, local index)``
by concatenation, so ``__getitem__`` and ``source_of`` are pure functions of the index. What an epoch draws
(with repeats) is ``epoch_indices(epoch)``; the stream shuffles it with its own seeded permutation, splits it over
data-parallel ranks and keeps the cursor, so order, SP-rank agreement and exact resume work as for one dataset.

Long text (stage 4): each source is a ``PackedTextDataset`` packed on its own, so documents never pack across
files and each source has at most one padded last sequence.
"""

from __future__ import annotations

import bisect
import math
from typing import Optional, Sequence

import numpy as np
import torch


class MixtureDataset:
    """Datasets ``sources`` (name -> dataset) drawn ``weights`` passes per epoch; ``seed`` picks partial passes."""

    def __init__(self, sources: dict[str, Sequence], weights: Optional[dict[str, float]] = None, seed: int = 0):
        if not sources:
            raise ValueError("a mixture needs at least one dataset")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            raise ValueError(f"weights for unknown sources: {', '.join(unknown)}")
        self.source_names = tuple(sources)
        self.datasets = [sources[name] for name in self.source_names]
        self.weights = [float(weights.get(name, 1.0)) for name in self.source_names]
        self.sizes = [len(dataset) for dataset in self.datasets]
        for name, weight, size in zip(self.source_names, self.weights, self.sizes):
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"source {name}: weight must be > 0, got {weight}")
            if size == 0:
                raise ValueError(f"source {name} is empty")
        self.offsets = np.cumsum([0] + self.sizes).tolist()
        self.draws = [max(1, math.floor(weight * size + 0.5)) for weight, size in zip(self.weights, self.sizes)]
        # Fixed per-source permutation the fractional part of a weight walks through, epoch after epoch.
        self._rotation = [
            torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + number))
            if draws % size else None
            for number, (size, draws) in enumerate(zip(self.sizes, self.draws))
        ]
        self.malformed_per_source = {name: int(getattr(dataset, "num_malformed", 0))
                                     for name, dataset in zip(self.source_names, self.datasets)}
        self.num_malformed = sum(self.malformed_per_source.values())

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"mixture index {index} out of range [0, {len(self)})")
        number = bisect.bisect_right(self.offsets, index) - 1
        return number, index - self.offsets[number]

    def __getitem__(self, index: int):
        number, local = self._locate(index)
        return self.datasets[number][local]

    def source_of(self, index: int) -> str:
        """Name of the dataset a mixture index belongs to (the stream counts drawn samples per source)."""
        return self.source_names[self._locate(index)[0]]

    @property
    def draws_per_epoch(self) -> int:
        return sum(self.draws)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """Mixture indices drawn in ``epoch`` (unshuffled, with repeats): ``draws[s]`` from each source ``s``."""
        parts = []
        for number, (offset, size, draws) in enumerate(zip(self.offsets, self.sizes, self.draws)):
            full, rest = divmod(draws, size)
            parts.append(torch.arange(offset, offset + size).repeat(full))
            if rest:
                start = (epoch * rest) % size
                window = (torch.arange(rest) + start) % size
                parts.append(offset + self._rotation[number][window])
        return torch.cat(parts)

    def describe(self) -> list[str]:
        """One line per source (samples, weight, draws per epoch, share) for the run log."""
        total = self.draws_per_epoch
        return [f"{name}: {size} samples x weight {weight:g} = {draws} draws/epoch ({100 * draws / total:.1f}%)"
                for name, size, weight, draws in zip(self.source_names, self.sizes, self.weights, self.draws)]
