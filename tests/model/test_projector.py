import json
import math

import pytest
import torch

from longvila.model.projector import (
    MultimodalProjector,
    MultimodalProjectorConfig,
    downsample_grid,
    tokens_per_frame,
)


def downsample_2x2(x: torch.Tensor) -> torch.Tensor:
    """``mlp_downsample``'s merge in VILA's current (row-major) order."""
    return downsample_grid(x, 2)


def vila_flat_square(x: torch.Tensor) -> torch.Tensor:
    """Independent transcription of VILA's DownSampleBlock (reshape/permute form) as the reference."""
    n, p, c = x.shape
    h = w = int(math.sqrt(p))
    x = x.reshape(n, h, w, c)
    n, w, h, c = x.size()
    if w % 2 == 1:
        x = torch.cat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1)
        n, w, h, c = x.size()
    if h % 2 == 1:
        x = torch.cat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2)
        n, w, h, c = x.size()
    x = x.view(n, w, h // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, h // 2, w // 2, c * 4).permute(0, 2, 1, 3).contiguous()
    return x.reshape(n, -1, c * 4)


@pytest.mark.parametrize("side,expected", [(4, 4), (5, 9), (16, 64), (27, 196), (32, 256)])
def test_downsample_shapes_and_matches_vila(side, expected):
    x = torch.randn(2, side * side, 3)
    out = downsample_2x2(x)
    assert out.shape == (2, expected, 12)
    assert torch.equal(out, vila_flat_square(x))
    assert tokens_per_frame(side * side, "mlp_downsample") == expected


def test_downsample_exact_order_even_grid():
    side, c = 4, 2
    grid = torch.arange(side * side * c, dtype=torch.float32).reshape(side, side, c)
    out = downsample_2x2(grid.reshape(1, side * side, c))[0]
    for i in range(2):
        for j in range(2):
            r, c = 2 * i, 2 * j
            want = torch.cat([grid[r, c], grid[r, c + 1], grid[r + 1, c], grid[r + 1, c + 1]])
            assert torch.equal(out[i * 2 + j], want), (i, j)


def test_downsample_odd_grid_pads_zero_row_then_column():
    side = 3
    grid = torch.arange(1, side * side + 1, dtype=torch.float32).reshape(side, side, 1)  # values 1..9, no zeros
    out = downsample_2x2(grid.reshape(1, 9, 1))[0]
    assert out.shape == (4, 4)
    assert out[0].tolist() == [1, 2, 4, 5]
    assert out[1].tolist() == [3, 0, 6, 0]  # (0,2),(0,pad),(1,2),(1,pad)
    assert out[2].tolist() == [7, 8, 0, 0]  # last row, then the padded row
    assert out[3].tolist() == [9, 0, 0, 0]


def test_downsample_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        downsample_2x2(torch.randn(1, 10, 4))
    with pytest.raises(ValueError, match=r"\(N, P, C\)"):
        downsample_2x2(torch.randn(10, 4))


def test_mlp_downsample_keys_and_shapes():
    proj = MultimodalProjector(MultimodalProjectorConfig("mlp_downsample"), mm_hidden_size=8, hidden_size=16)
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == {
        "layers.1.weight": (32,),
        "layers.1.bias": (32,),
        "layers.2.weight": (16, 32),
        "layers.2.bias": (16,),
        "layers.4.weight": (16, 16),
        "layers.4.bias": (16,),
    }
    assert isinstance(proj.layers[1], torch.nn.LayerNorm) and isinstance(proj.layers[3], torch.nn.GELU)
    assert proj(torch.randn(3, 729, 8)).shape == (3, 196, 16)


def test_mlp2x_gelu_keys_and_shapes():
    proj = MultimodalProjector(MultimodalProjectorConfig("mlp2x_gelu"), mm_hidden_size=8, hidden_size=16)
    assert set(proj.state_dict()) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}
    assert proj(torch.randn(2, 25, 8)).shape == (2, 25, 16)
    assert proj.tokens_per_frame(25) == 25


def test_unknown_projector_type():
    with pytest.raises(ValueError, match="mlp_downsample_fix"):
        MultimodalProjectorConfig("mlp_downsample_fix")


@pytest.mark.parametrize("kind", ["mlp_downsample", "mlp2x_gelu"])
def test_save_load_vila_folder(tmp_path, kind):
    torch.manual_seed(0)
    proj = MultimodalProjector(MultimodalProjectorConfig(kind), mm_hidden_size=8, hidden_size=16)
    proj.save_pretrained(tmp_path / "mm_projector")
    cfg = json.loads((tmp_path / "mm_projector" / "config.json").read_text())
    assert cfg["mm_projector_type"] == kind
    assert cfg["model_type"] == "v2l_projector"
    assert cfg["architectures"] == ["MultimodalProjector"]
    assert (tmp_path / "mm_projector" / "model.safetensors").is_file()
    loaded = MultimodalProjector.from_pretrained(tmp_path / "mm_projector", mm_hidden_size=8, hidden_size=16)
    x = torch.randn(2, 16, 8)
    assert torch.equal(proj(x), loaded(x))


def test_load_rejects_wrong_widths(tmp_path):
    proj = MultimodalProjector(MultimodalProjectorConfig(), mm_hidden_size=8, hidden_size=16)
    proj.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError):
        MultimodalProjector.from_pretrained(tmp_path, mm_hidden_size=8, hidden_size=32)
