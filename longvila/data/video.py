"""Video loading with decord: uniform frame sampling over the whole clip, with an optional fps cap.

Frame selection (``sample_frame_indices``) is separate from decoding so evaluation code (e.g. V-NIAH, which must
know whether the needle frame was sampled) can reproduce exactly the frames the model saw.

Opening is separate from decoding too (:func:`open_video` gives a :class:`VideoClip`): sequence-parallel ranks
share one sample and each encodes only its share of the frames, so each decodes only those
(``longvila/data/rank_media.py``) instead of every rank decoding the whole clip.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from longvila.errors import MediaError

__all__ = ["MediaError", "VideoClip", "load_video", "num_frames_to_sample", "open_video", "sample_frame_indices"]


def num_frames_to_sample(num_frames: int, duration_s: float, fps: float | None = None) -> int:
    """How many frames to take: ``num_frames``, or with an fps cap ``min(num_frames, max(1, floor(duration*fps)))``.

    The count does not depend on how many frames the file has (a clip shorter than ``num_frames`` repeats
    frames) so the number of visual tokens per video stays predictable for the sequence-length budget.
    """
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if fps is None:
        return num_frames
    if not fps > 0:
        raise ValueError(f"fps must be > 0 or None, got {fps!r}")
    # The small epsilon keeps e.g. 3.0000000001 * 1 from flooring wrongly after float division.
    return min(num_frames, max(1, math.floor(duration_s * fps + 1e-9)))


def sample_frame_indices(total_frames: int, n: int) -> np.ndarray:
    """``n`` indices spread uniformly over ``[0, total_frames - 1]``, first and last frame included.

    Indices are ``round(linspace(0, total-1, n))``; with ``n == 1`` the single index is 0. When ``n > total`` some
    frames repeat.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.round(np.linspace(0, total_frames - 1, n)).astype(np.int64)


@dataclass(frozen=True)
class VideoClip:
    """The ``indices`` sampled from a video file (uniform over the clip, as ``longvila.data.video`` samples)."""

    path: str
    indices: tuple[int, ...]

    @property
    def num_frames(self) -> int:
        return len(self.indices)

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Sampled frames ``[start, stop)`` as a uint8 (k, H, W, 3) array, decoded with decord's ``get_batch``."""
        if start >= stop:
            return np.zeros((0, 1, 1, 3), dtype=np.uint8)
        try:
            from decord import VideoReader, cpu

            reader = VideoReader(self.path, ctx=cpu(0), num_threads=1)
            frames = reader.get_batch(list(self.indices[start:stop])).asnumpy()
        except Exception as e:  # decord raises DECORDError / RuntimeError on corrupt streams
            raise MediaError(f"cannot decode video {self.path}: {e}") from e
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise MediaError(f"unexpected frame array {frames.shape} {frames.dtype} from {self.path}")
        return frames


def open_video(path: str | os.PathLike, num_frames: int, fps: float | None = None) -> VideoClip:
    """Open a video and choose its frames (``num_frames``, fewer under an ``fps`` cap) without decoding them."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"video not found: {path}")
    try:
        from decord import VideoReader, cpu

        reader = VideoReader(path, ctx=cpu(0), num_threads=1)
        total, avg_fps = len(reader), float(reader.get_avg_fps())
    except Exception as e:
        raise MediaError(f"cannot decode video {path}: {e}") from e
    if total < 1:
        raise MediaError(f"video has no frames: {path}")
    n = num_frames_to_sample(num_frames, total / avg_fps if avg_fps > 0 else 0.0, fps)
    return VideoClip(path, tuple(sample_frame_indices(total, n).tolist()))


def load_video(path: str | os.PathLike, num_frames: int, fps: float | None = None) -> np.ndarray:
    """Decode ``num_frames`` uniformly sampled frames (fewer under an fps cap) as a uint8 array (T, H, W, 3).

    Missing files, unreadable containers, zero-length clips and decode failures raise ``MediaError``.
    """
    if not isinstance(num_frames, int) or num_frames < 1:  # validate before touching the file
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 or None, got {fps!r}")
    clip = open_video(path, num_frames, fps)
    return clip.frames(0, clip.num_frames)
