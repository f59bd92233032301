"""Vision-to-language projector with VILA's exact module layouts, state-dict keys and token orders.

VILA checkpoints store the projector in ``mm_projector/`` as a tiny HF-style folder whose ``config.json`` only
names the projector type; the input/output widths come from the top-level VILA config (``mm_hidden_size`` and
``hidden_size``). We keep the same split so a released checkpoint's projector loads as-is and ours loads in VILA.

Types (VILA's ``llava/model/multimodal_projector/base_projector.py``):
    linear                    ``layers`` = Linear(C, H)
    mlp{N}x_gelu              Linear(C, H), then N-1 x [GELU, Linear(H, H)]
    mlp_downsample            2x2 merge, LayerNorm(4C), Linear(4C, H), GELU, Linear(H, H)
    mlp_downsample_2x2_fix    the same layers (NVILA-Lite spelling)
    mlp_downsample_3x3_fix    3x3 merge, LayerNorm(9C), Linear(9C, 3C), GELU, LayerNorm(3C), Linear(3C, H), GELU,
                              Linear(H, H)

Token order. The k x k merge turns an s x s patch grid into an (s/k) x (s/k) grid of merged tokens. VILA has
emitted those tokens row-major since December 2024 (commit 36f6adc added a final permute); ``mlp_downsample``
checkpoints trained before that (VILA1.5, the 2024 LongVILA-8B) saw them column-major. Nothing in a checkpoint
records which, so the order is an explicit choice (``token_order`` in ``mm_projector/config.json``, set from
``--mm_projector_token_order``); loading a 2024 checkpoint with the wrong order would silently transpose every
image.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PROJECTOR_TYPES = ("linear", "mlp{N}x_gelu", "mlp_downsample", "mlp_downsample_2x2_fix", "mlp_downsample_3x3_fix")
"""Names accepted in ``mm_projector_type`` (``mlp{N}x_gelu`` for any N >= 1, e.g. ``mlp2x_gelu``)."""
DOWNSAMPLE_FACTORS = {"mlp_downsample": 2, "mlp_downsample_2x2_fix": 2, "mlp_downsample_3x3_fix": 3}
TOKEN_ORDERS = ("row_major", "column_major")
"""``row_major``: VILA since Dec 2024 (and NVILA). ``column_major``: 2024 ``mlp_downsample`` checkpoints."""
_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"


def _check_type(projector_type) -> None:
    if projector_type == "linear" or projector_type in DOWNSAMPLE_FACTORS:
        return
    match = _MLP_GELU.match(projector_type) if isinstance(projector_type, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"unknown mm_projector_type {projector_type!r}; expected one of {', '.join(PROJECTOR_TYPES)}")


def downsample_grid(x: torch.Tensor, factor: int, token_order: str = "row_major") -> torch.Tensor:
    """Merge each ``factor`` x ``factor`` block of patch tokens into one token of width factor² C.

    x is (N, P, C) with P a perfect square (the s x s patch grid, row-major). The grid is zero-padded at the
    bottom, then on the right, to a multiple of ``factor``, as VILA does (27x27 SigLIP grids give 14x14 = 196
    tokens at factor 2, 9x9 = 81 at factor 3). Merged token (i, j) concatenates x(k i + r, k j + c) over r, then
    c. Tokens come out row-major over (i, j), or column-major with ``token_order="column_major"``.
    """
    if x.dim() != 3:
        raise ValueError(f"downsample expects (N, P, C), got shape {tuple(x.shape)}")
    if token_order not in TOKEN_ORDERS:
        raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {token_order!r}")
    n, p, c = x.shape
    side = math.isqrt(p)
    if side * side != p:
        raise ValueError(f"downsample needs a square patch grid, got {p} tokens")
    grid = x.reshape(n, side, side, c)
    padded = -(-side // factor) * factor
    if padded != side:
        grid = torch.cat([grid, grid.new_zeros(n, padded - side, side, c)], dim=1)  # zero rows first (VILA order)
        grid = torch.cat([grid, grid.new_zeros(n, padded, padded - side, c)], dim=2)  # then zero columns
    cells = padded // factor
    grid = grid.reshape(n, cells, factor, cells, factor, c)
    # axes: (n, i, r, j, c_off, ch) -> (n, i, j, r, c_off, ch) row-major, or (n, j, i, ...) column-major
    order = (0, 1, 3, 2, 4, 5) if token_order == "row_major" else (0, 3, 1, 2, 4, 5)
    return grid.permute(order).reshape(n, cells * cells, factor * factor * c)


def tokens_per_frame(num_patches: int, projector_type: str) -> int:
    """Number of LLM tokens one frame becomes after the projector (196 for SigLIP-384 with mlp_downsample)."""
    _check_type(projector_type)
    factor = DOWNSAMPLE_FACTORS.get(projector_type)
    if factor is None:
        return num_patches
    return math.ceil(math.isqrt(num_patches) / factor) ** 2


class DownSample(nn.Module):
    """Parameter-free first layer of the downsample projectors (a module so Sequential indices match VILA)."""

    def __init__(self, factor: int, token_order: str):
        super().__init__()
        self.factor, self.token_order = factor, token_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample_grid(x, self.factor, self.token_order)


@dataclass
class MultimodalProjectorConfig:
    """What ``mm_projector/config.json`` holds; widths are not stored there (VILA reads them from the top config)."""

    mm_projector_type: str = "mlp_downsample"
    token_order: str = "row_major"

    def __post_init__(self):
        _check_type(self.mm_projector_type)
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"mm_projector token_order must be one of {', '.join(TOKEN_ORDERS)}, "
                             f"got {self.token_order!r}")
        if self.token_order != "row_major" and self.mm_projector_type != "mlp_downsample":
            raise ValueError(f"token_order {self.token_order!r} only exists for mlp_downsample checkpoints, "
                             f"not {self.mm_projector_type!r}")

    def to_dict(self) -> dict:
        out = {"mm_projector_type": self.mm_projector_type, "model_type": "v2l_projector",
               "architectures": ["MultimodalProjector"]}
        if self.token_order != "row_major":
            out["token_order"] = self.token_order
        return out


def build_layers(projector_type: str, c: int, h: int, token_order: str = "row_major") -> nn.Module:
    """VILA's ``layers`` module for a projector type (so state-dict keys are VILA's)."""
    _check_type(projector_type)
    if projector_type == "linear":
        return nn.Linear(c, h)
    match = _MLP_GELU.match(projector_type)
    if match:
        modules: list[nn.Module] = [nn.Linear(c, h)]
        for _ in range(1, int(match.group(1))):
            modules += [nn.GELU(), nn.Linear(h, h)]
        return nn.Sequential(*modules)
    factor = DOWNSAMPLE_FACTORS[projector_type]
    merge = DownSample(factor, token_order)
    if factor == 2:
        return nn.Sequential(merge, nn.LayerNorm(4 * c), nn.Linear(4 * c, h), nn.GELU(), nn.Linear(h, h))
    return nn.Sequential(merge, nn.LayerNorm(9 * c), nn.Linear(9 * c, 3 * c), nn.GELU(), nn.LayerNorm(3 * c),
                         nn.Linear(3 * c, h), nn.GELU(), nn.Linear(h, h))


class MultimodalProjector(nn.Module):
    """Maps vision features (N, P, mm_hidden_size) to LLM embeddings (N, T, hidden_size)."""

    def __init__(self, config: MultimodalProjectorConfig, mm_hidden_size: int, hidden_size: int):
        super().__init__()
        self.config = config
        self.mm_hidden_size = mm_hidden_size
        self.hidden_size = hidden_size
        self.layers = build_layers(config.mm_projector_type, mm_hidden_size, hidden_size, config.token_order)

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
        cls, path: str | os.PathLike, mm_hidden_size: int, hidden_size: int, dtype: torch.dtype = torch.float32,
        token_order: str | None = None,
    ) -> "MultimodalProjector":
        """Load a ``mm_projector/`` folder (ours or VILA's); widths come from the top-level VILA config.

        ``token_order`` overrides the folder's (VILA's folders never record it: see the module docstring).
        """
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"no projector config.json in {path}")
        raw = json.loads(cfg_file.read_text())
        config = MultimodalProjectorConfig(raw.get("mm_projector_type"), token_order or raw.get("token_order",
                                                                                               "row_major"))
        if (path / WEIGHTS_NAME).is_file():
            state = load_file(str(path / WEIGHTS_NAME))
        elif (path / LEGACY_WEIGHTS_NAME).is_file():
            state = torch.load(path / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"no projector weights ({WEIGHTS_NAME}) in {path}")
        with torch.device("meta"):
            model = cls(config, mm_hidden_size, hidden_size)
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(dtype)
