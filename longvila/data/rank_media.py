"""Decode only the frames this sequence-parallel rank encodes, as part of collating a batch.

The batch's frames, in text order over all its samples, are split over the SP group by the balanced contiguous rule
of ``longvila/distributed/mmsp.py`` (``split_frames``); the model applies the same rule, so what a rank loads is
exactly what it encodes. Each medium is cut to its overlap with the rank's range and only that piece is decoded
(decord ``get_batch`` on those indices) and preprocessed. Every rank still knows every medium's frame count, so
the sequence layout is the same on all of them.

A clip that opened but fails to decode can fail on one rank only (its share of the frames is corrupt): the batch
then names the failing rows in ``media_failed`` and the stream has the SP group agree before anything trains on
it (``longvila/engine/prefetch.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from longvila.errors import MediaError
from longvila.data.image import pixel_values
from longvila.distributed.mmsp import split_frames


@dataclass(frozen=True)
class RankMedia:
    """Loads the share of a batch's frames that SP rank ``sp_rank`` of ``sp_size`` encodes."""

    image_processor: object
    sp_rank: int = 0
    sp_size: int = 1

    def __call__(self, media: list[list]) -> dict:
        """``media``: per sample, its opened media (``ImageFile`` / ``VideoClip``) -> the batch's ``frames``
        (this rank's frames as one (k, 3, H, W) pixel tensor, in text order: one tensor, so it moves to the device
        in one copy and the tower reads it without another), ``media_frames`` (every medium's frame count),
        ``media_failed`` (rows whose frames could not be decoded here) and ``decode_seconds``. ``media`` becomes
        None: the frames and counts replace it."""
        counts = [[m.num_frames for m in sample] for sample in media]
        split = split_frames(sum(map(sum, counts)), self.sp_rank, self.sp_size)
        started = time.perf_counter()
        pieces, failed, offset = [], [], 0
        for row, sample in enumerate(media):
            for medium in sample:
                lo, hi = max(split.start - offset, 0), min(split.stop - offset, medium.num_frames)
                offset += medium.num_frames
                if lo < hi and row not in failed:
                    try:
                        pieces.append(pixel_values(self.image_processor, medium.frames(lo, hi)))
                    except MediaError:
                        failed.append(row)
        frames = torch.cat(pieces) if len(pieces) > 1 else pieces[0] if pieces else torch.zeros((0, 3, 1, 1))
        return {"media": None, "frames": frames, "media_frames": counts, "media_failed": failed,
                "decode_seconds": time.perf_counter() - started}
