import os

import pytest
from PIL import Image

from longvila.data.image import MediaError, load_image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_load_image_returns_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode}.png"
    Image.new(mode, (10, 7), 200 if mode in ("L", "P") else (200, 10, 20, 255)[: len(mode)]).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (10, 7)


def test_missing_image_raises_media_error(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_corrupt_and_truncated_images_raise_media_error(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(os.urandom(500))
    with pytest.raises(MediaError):
        load_image(junk)
    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(MediaError):
        load_image(truncated)
