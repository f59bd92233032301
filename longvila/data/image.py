"""Image loading: always RGB, and every failure becomes a MediaError so one bad file skips one sample."""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from longvila.errors import MediaError

__all__ = ["ImageFile", "MediaError", "load_image", "open_image", "pixel_values"]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file and return a fully decoded RGB ``PIL.Image``.

    The pixels are decoded here (``convert`` forces it) so truncated files fail now, inside the dataset's
    error handling, rather than later inside the image processor. Grey, palette and RGBA images become RGB
    (alpha is dropped: SigLIP takes 3 channels).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise MediaError(f"cannot decode image {path}: {e}") from e


@dataclass(frozen=True)
class ImageFile:
    """One image: a medium of one frame."""

    path: str

    @property
    def num_frames(self) -> int:
        return 1

    def frames(self, start: int, stop: int) -> list:
        """Frames ``[start, stop)`` of this medium (an image has only frame 0) as PIL images."""
        return [load_image(self.path)] if start < stop else []


def open_image(path: str | os.PathLike) -> ImageFile:
    """An existing file whose header PIL can read (the pixels are decoded later, by the rank that encodes it)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # PIL raises many types
        raise MediaError(f"cannot decode image {path}: {e}") from e
    return ImageFile(path)


def pixel_values(image_processor, images):
    """(N, 3, H, W) float32 pixels of N PIL images or uint8 (H, W, 3) frames, through the HF image processor.

    The one preprocessing call the frame encoder's inputs go through, so evaluation (V-NIAH) and ``longvila chat``
    feed the model exactly what training does.
    """
    import torch

    out = image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    return torch.as_tensor(out, dtype=torch.float32)
