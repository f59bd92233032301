"""A reference of VILA's projector and checkpoint writer, for the compatibility tests.

Written from VILA's documented math (``llava/model/multimodal_projector/base_projector.py``) with explicit loops
over the merged grid, independently of ``longvila.model.projector``, and saved through transformers' own
``save_pretrained`` the way VILA's ``LlavaMetaModel.save_pretrained`` writes each part, so the tests read folders
that our ``save_vila`` did not write.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


def reference_merge(x: torch.Tensor, k: int, column_major: bool = False) -> torch.Tensor:
    """Token (i, j) = concat over r, then c, of patch (k i + r, k j + c); zero padding at bottom/right."""
    n, p, c = x.shape
    side = math.isqrt(p)
    padded = -(-side // k) * k
    grid = torch.zeros(n, padded, padded, c, dtype=x.dtype)
    grid[:, :side, :side] = x.reshape(n, side, side, c)
    cells = padded // k
    pairs = [(j, i) for i in range(cells) for j in range(cells)] if column_major else \
        [(i, j) for i in range(cells) for j in range(cells)]
    tokens = [torch.cat([grid[:, k * i + r, k * j + cc] for r in range(k) for cc in range(k)], dim=-1)
              for i, j in pairs]
    return torch.stack(tokens, dim=1)


class ReferenceMerge(nn.Module):
    def __init__(self, k: int, column_major: bool):
        super().__init__()
        self.k, self.column_major = k, column_major

    def forward(self, x):
        return reference_merge(x, self.k, self.column_major)


class ProjectorConfig(PretrainedConfig):
    model_type = "v2l_projector"

    def __init__(self, mm_projector_type: str = None, **kwargs):
        super().__init__(**kwargs)
        self.mm_projector_type = mm_projector_type


class ReferenceProjector(PreTrainedModel):
    """VILA's MultimodalProjector: the same Sequential layouts (so the same state-dict keys) per type."""

    config_class = ProjectorConfig

    def __init__(self, config: ProjectorConfig, mm_hidden_size: int = 8, hidden_size: int = 16,
                 column_major: bool = False):
        super().__init__(config)
        kind, c, h = config.mm_projector_type, mm_hidden_size, hidden_size
        if kind == "linear":
            self.layers = nn.Linear(c, h)
        elif kind in ("mlp_downsample", "mlp_downsample_2x2_fix"):
            self.layers = nn.Sequential(ReferenceMerge(2, column_major), nn.LayerNorm(4 * c), nn.Linear(4 * c, h),
                                        nn.GELU(), nn.Linear(h, h))
        elif kind == "mlp_downsample_3x3_fix":
            self.layers = nn.Sequential(ReferenceMerge(3, column_major), nn.LayerNorm(9 * c),
                                        nn.Linear(9 * c, 3 * c), nn.GELU(), nn.LayerNorm(3 * c),
                                        nn.Linear(3 * c, h), nn.GELU(), nn.Linear(h, h))
        else:
            depth = int(re.match(r"^mlp(\d+)x_gelu$", kind).group(1))
            modules = [nn.Linear(c, h)]
            for _ in range(1, depth):
                modules += [nn.GELU(), nn.Linear(h, h)]
            self.layers = nn.Sequential(*modules)
        with torch.no_grad():  # off the default init, so a re-initialised load cannot pass
            for param in self.parameters():
                param.normal_(0, 0.3)

    def forward(self, x):
        return self.layers(x)


VILA_MEDIA_TOKENS = ("<vila/sentinel>", "<image>", "<vila/video>")


def write_vila_checkpoint(root: Path, llm, tokenizer, vision_tower, image_processor, projector,
                          **top_level) -> Path:
    """Write ``root`` as VILA does: each part through transformers' save_pretrained, then the top config.

    The tokenizer gets VILA's media tokens (without an embedding resize). The top config carries VILA's
    LlavaConfig key set (``configuration_llava.py``), with ``resume_path`` pointing at the folder.
    """
    root = Path(root)
    tokenizer.add_tokens(list(VILA_MEDIA_TOKENS), special_tokens=True)
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision_tower.save_pretrained(root / "vision_tower")
    image_processor.save_pretrained(root / "vision_tower")
    projector.save_pretrained(root / "mm_projector")
    config = {
        "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "resume_path": str(root),
        "_name_or_path": str(root),
        "llm_cfg": json.loads((root / "llm" / "config.json").read_text()),
        "vision_tower_cfg": json.loads((root / "vision_tower" / "config.json").read_text()),
        "mm_projector_cfg": json.loads((root / "mm_projector" / "config.json").read_text()),
        "hidden_size": llm.config.hidden_size, "mm_hidden_size": vision_tower.config.hidden_size,
        "image_aspect_ratio": "resize", "num_video_frames": 8, "fps": 0.0, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "mm_projector_lr": None, "vision_tower_lr": None, "vision_resolution": -1, "interpolate_mode": "linear",
        "s2": False, "dynamic_s2": False, "s2_scales": "384,768,1152", "s2_max_split_size": 384,
        "s2_resize_output_to_scale_idx": 0, "min_tiles": 1, "max_tiles": 12, "video_max_tiles": 1,
        "ps3": False, "num_time_tokens": 0, "time_token_format": "<t{t}>",
        "image_encoder": '{"_target_": "llava.model.encoders.BasicImageEncoder"}',
        "video_encoder": '{"_target_": "llava.model.encoders.BasicVideoEncoder"}',
        "model_dtype": "torch.float32", "tune_language_model": True, "tune_vision_tower": True,
        "tune_mm_projector": True, "transformers_version": "4.46.0",
    }
    config.update(top_level)
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root
