"""Batch collation: right-pad samples to a common length and count the ones datasets rejected (None).

Output (what ``VILAModel.forward`` takes): input_ids (B,L) padded with the pad id, labels (B,L) padded with IGNORE_INDEX,
attention_mask (B,L) bool, media (list of B lists of (T,3,H,W) tensors), num_skipped (int), and position_ids
(B,L) when any sample carries them. An all-None micro-batch is not an error here: it yields B=0 and the engine
decides what to do (it must still take part in collectives).
"""

from __future__ import annotations

import torch

from longvila.constants import IGNORE_INDEX


def _check(sample: dict, i: int) -> int:
    ids, labels = sample["input_ids"], sample["labels"]
    if ids.dim() != 1 or ids.shape != labels.shape:
        raise ValueError(f"sample {i}: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} must be equal 1-D")
    pos = sample.get("position_ids")
    if pos is not None and pos.shape != ids.shape:
        raise ValueError(f"sample {i}: position_ids {tuple(pos.shape)} does not match input_ids {tuple(ids.shape)}")
    return ids.numel()


def collate(samples, pad_token_id: int, rank_media=None) -> dict:
    """Collate dataset samples (None entries are dropped and counted) into a padded batch.

    ``rank_media`` (a ``longvila.data.rank_media.RankMedia``): the samples carry opened, undecoded media and only
    this sequence-parallel rank's frames are decoded; the batch then also holds ``media_frames``,
    ``media_failed`` and ``decode_seconds``.

    position_ids: samples that carry none get 0..len-1; the padding of every row restarts at 0 and counts up, so
    the padding forms one extra "document" that no real token can attend to or predict.
    Use ``functools.partial(collate, pad_token_id=...)`` as a DataLoader ``collate_fn`` (it pickles for workers).
    """
    if pad_token_id is None:
        raise ValueError("pad_token_id must be an int, got None")
    kept = [s for s in samples if s is not None]
    num_skipped = len(samples) - len(kept)
    lengths = [_check(s, i) for i, s in enumerate(samples) if s is not None]  # i: position in `samples`
    batch_size, max_len = len(kept), max(lengths, default=0)

    input_ids = torch.full((batch_size, max_len), int(pad_token_id), dtype=torch.long)
    labels = torch.full((batch_size, max_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, max_len), dtype=torch.bool)
    with_positions = any(s.get("position_ids") is not None for s in kept)
    position_ids = torch.zeros((batch_size, max_len), dtype=torch.long) if with_positions else None

    for row, (sample, n) in enumerate(zip(kept, lengths)):
        input_ids[row, :n] = sample["input_ids"]
        labels[row, :n] = sample["labels"]
        attention_mask[row, :n] = True
        if position_ids is not None:
            pos = sample.get("position_ids")
            position_ids[row, :n] = pos if pos is not None else torch.arange(n)
            position_ids[row, n:] = torch.arange(max_len - n)

    batch = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "media": [list(s.get("media", [])) for s in kept],
        "num_skipped": num_skipped,
    }
    if rank_media is not None:
        batch.update(rank_media(batch["media"]))
    if position_ids is not None:
        batch["position_ids"] = position_ids
    return batch
