"""Which VILA config features this trainer implements, and a one-line refusal for the rest.

NVILA added options on top of the LongVILA recipe (multi-scale S2 tiling, dynamic tiling by aspect ratio, the
token-compressing ``TSPVideoEncoder``, PS3 high-resolution look-close, time tokens). A checkpoint that uses them
has the same folder layout, so it would load silently and then produce the wrong number of media tokens deep in
the forward pass. We read the top-level config once at load time and refuse those features by name instead.
"""

from __future__ import annotations

import json

BASIC_ENCODERS = {"image_encoder": "BasicImageEncoder", "video_encoder": "BasicVideoEncoder"}
SUPPORTED_ASPECT_RATIOS = (None, "resize")


def _encoder_target(value) -> str | None:
    """VILA stores the encoder as a JSON string (or dict) with a ``_target_`` class path."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.get("_target_") if isinstance(value, dict) else str(value)


def unsupported_features(cfg: dict) -> list[str]:
    """Human-readable names of the features in a VILA top-level config that longvila does not implement."""
    found = []
    for key in ("s2", "dynamic_s2", "ps3"):
        if cfg.get(key):
            found.append(f"{key}={cfg[key]!r}")
    if cfg.get("image_aspect_ratio") not in SUPPORTED_ASPECT_RATIOS:
        found.append(f"image_aspect_ratio={cfg['image_aspect_ratio']!r}")
    for key, basic in BASIC_ENCODERS.items():
        target = _encoder_target(cfg.get(key))
        if target is not None and target.rsplit(".", 1)[-1] != basic:
            found.append(f"{key}={target}")
    if cfg.get("num_time_tokens"):
        found.append(f"num_time_tokens={cfg['num_time_tokens']!r}")
    return found


def check_supported(cfg: dict, where) -> None:
    """ValueError naming every unsupported feature (one line), so a NVILA checkpoint never loads half-right."""
    found = unsupported_features(cfg)
    if found:
        raise ValueError(f"{where} uses NVILA features longvila does not implement: {', '.join(found)} "
                         f"(supported: the LongVILA recipe: basic image/video encoders, image_aspect_ratio "
                         f"'resize', no S2/PS3/time tokens)")
