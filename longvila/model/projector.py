"""Vision-to-language projector with VILA's exact module layout and state-dict keys.

VILA checkpoints store the projector in ``mm_projector/`` as a tiny HF-style folder whose ``config.json`` only
names the projector type; the input/output widths come from the top-level VILA config (``mm_hidden_size`` and
``hidden_size``). We keep the same split so a released checkpoint's projector loads as-is and ours loads in VILA.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PROJECTOR_TYPES = ("mlp_downsample", "mlp2x_gelu")
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"


def downsample_2x2(x: torch.Tensor) -> torch.Tensor:
    """Merge each 2x2 block of patch tokens into one token of width 4C.

    x is (N, P, C) with P a perfect square (the h x w patch grid, row-major). An odd grid is padded with a zero
    row and then a zero column, exactly like VILA's DownSampleBlock, so 27x27 SigLIP grids give 14x14 = 196 tokens.
    Output token (i, j) = concat[x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)], row-major over (i, j).
    """
    if x.dim() != 3:
        raise ValueError(f"downsample_2x2 expects (N, P, C), got shape {tuple(x.shape)}")
    n, p, c = x.shape
    side = math.isqrt(p)
    if side * side != p:
        raise ValueError(f"downsample_2x2 needs a square patch grid, got {p} tokens")
    grid = x.reshape(n, side, side, c)
    if side % 2 == 1:
        grid = torch.cat([grid, grid.new_zeros(n, 1, side, c)], dim=1)  # zero row first (VILA order)
        grid = torch.cat([grid, grid.new_zeros(n, side + 1, 1, c)], dim=2)  # then zero column
        side += 1
    half = side // 2
    grid = grid.reshape(n, half, 2, half, 2, c).permute(0, 1, 3, 2, 4, 5)  # (n, i, j, row-offset, col-offset, c)
    return grid.reshape(n, half * half, 4 * c)


def tokens_per_frame(num_patches: int, projector_type: str) -> int:
    """Number of LLM tokens one frame becomes after the projector (196 for SigLIP-384 with mlp_downsample)."""
    if projector_type == "mlp_downsample":
        return math.ceil(math.isqrt(num_patches) / 2) ** 2
    if projector_type == "mlp2x_gelu":
        return num_patches
    raise ValueError(f"unknown mm_projector_type {projector_type!r}; expected one of {PROJECTOR_TYPES}")


class DownSample2x2(nn.Module):
    """Parameter-free ``layers.0`` of mlp_downsample (kept as a module so the Sequential indices match VILA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample_2x2(x)


@dataclass
class MultimodalProjectorConfig:
    """What ``mm_projector/config.json`` holds; widths are not stored there (VILA reads them from the top config)."""

    mm_projector_type: str = "mlp_downsample"

    def __post_init__(self):
        if self.mm_projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"unknown mm_projector_type {self.mm_projector_type!r}; expected one of {PROJECTOR_TYPES}"
            )

    def to_dict(self) -> dict:
        return {
            "mm_projector_type": self.mm_projector_type,
            "model_type": "v2l_projector",
            "architectures": ["MultimodalProjector"],
        }


class MultimodalProjector(nn.Module):
    """Maps vision features (N, P, mm_hidden_size) to LLM embeddings (N, T, hidden_size)."""

    def __init__(self, config: MultimodalProjectorConfig, mm_hidden_size: int, hidden_size: int):
        super().__init__()
        self.config = config
        self.mm_hidden_size = mm_hidden_size
        self.hidden_size = hidden_size
        c, h = mm_hidden_size, hidden_size
        if config.mm_projector_type == "mlp_downsample":
            self.layers = nn.Sequential(
                DownSample2x2(), nn.LayerNorm(4 * c), nn.Linear(4 * c, h), nn.GELU(), nn.Linear(h, h)
            )
        else:  # mlp2x_gelu
            self.layers = nn.Sequential(nn.Linear(c, h), nn.GELU(), nn.Linear(h, h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def tokens_per_frame(self, num_patches: int) -> int:
        return tokens_per_frame(num_patches, self.config.mm_projector_type)

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write VILA's ``mm_projector/`` folder: config.json + model.safetensors."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.config.to_dict(), torch_dtype=str(next(self.parameters()).dtype).replace("torch.", ""))
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, mm_hidden_size: int, hidden_size: int, dtype: torch.dtype = torch.float32
    ) -> "MultimodalProjector":
        """Load a ``mm_projector/`` folder (ours or VILA's); widths come from the top-level VILA config."""
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"no projector config.json in {path}")
        raw = json.loads(cfg_file.read_text())
        model = cls(MultimodalProjectorConfig(raw.get("mm_projector_type")), mm_hidden_size, hidden_size)
        if (path / WEIGHTS_NAME).is_file():
            state = load_file(str(path / WEIGHTS_NAME))
        elif (path / LEGACY_WEIGHTS_NAME).is_file():
            state = torch.load(path / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"no projector weights ({WEIGHTS_NAME}) in {path}")
        model.load_state_dict(state, strict=True)
        return model.to(dtype)
