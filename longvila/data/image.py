"""Image loading: always RGB, and every failure becomes a MediaError so one bad file skips one sample."""

from __future__ import annotations

import os

from PIL import Image

from longvila.data.errors import MediaError

__all__ = ["MediaError", "load_image"]


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
