"""Assemble a VILA model from pretrained parts, as VILA's stage 1 does.

VILA starts from an HF causal LM folder (``--model_name_or_path``), a SigLIP folder (``--vision_tower``; the
released siglip-so400m-patch14-384 is a full ``SiglipModel``) and a freshly initialised projector
(``--mm_projector``). The result is an ordinary ``VILAModel``: saved with ``save_vila`` it becomes a VILA-layout
checkpoint that every later stage starts from with ``--init_from``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from longvila.model.checkpoint import load_llm, load_vision_tower
from longvila.model.folders import require_kind
from longvila.model.projector import MultimodalProjector, MultimodalProjectorConfig
from longvila.model.tokenizer import CHAT_TEMPLATES
from longvila.model.vlm import MediaTokenIds, VILAModel

logger = logging.getLogger(__name__)

VILA_TEMPLATE_NAMES = {"qwen2": "qwen2", "llama3": None}
"""Top-level ``chat_template`` value per template: VILA opens ``chat_templates/<name>.jinja`` for a non-null name
and ships no Llama-3 file, so Llama-3 checkpoints carry the template only in the tokenizer."""


@dataclass(frozen=True)
class Parts:
    """What VILA's stage-1 flags name."""

    model_name_or_path: str | os.PathLike
    vision_tower: str | os.PathLike
    mm_projector: str = "mlp_downsample"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "cls_patch"
    chat_template: str | None = None


def build_from_parts(parts: Parts, dtype: torch.dtype = torch.float32, seed: int = 0):
    """-> (VILAModel, tokenizer, image_processor) with pretrained LLM + SigLIP and a fresh projector."""
    require_kind(parts.model_name_or_path, "llm", "--model_name_or_path")
    require_kind(parts.vision_tower, "siglip", "--vision_tower")
    if parts.chat_template is not None and parts.chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"--chat_template must be one of {', '.join(CHAT_TEMPLATES)}, got {parts.chat_template!r}")
    llm, tokenizer = load_llm(parts.model_name_or_path, dtype)
    template_name = parts.chat_template
    if tokenizer.chat_template is None:
        if template_name is None:
            raise ValueError(f"{parts.model_name_or_path} has no chat template: choose one with --chat_template "
                             f"{'|'.join(CHAT_TEMPLATES)}")
        tokenizer.chat_template = CHAT_TEMPLATES[template_name]
    elif template_name is not None:
        logger.info("%s has its own chat template; --chat_template %s only names it in config.json",
                    parts.model_name_or_path, template_name)
    vision_tower, image_processor = load_vision_tower(parts.vision_tower, dtype)
    num_layers = vision_tower.config.num_hidden_layers
    if not -num_layers - 1 <= parts.mm_vision_select_layer <= num_layers:
        raise ValueError(f"--mm_vision_select_layer {parts.mm_vision_select_layer} is outside the vision tower's "
                         f"{num_layers + 1} hidden states")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = MultimodalProjector(MultimodalProjectorConfig(parts.mm_projector),
                                        vision_tower.config.hidden_size, llm.config.hidden_size).to(dtype)
    config = {
        "mm_vision_select_layer": parts.mm_vision_select_layer,
        "mm_vision_select_feature": parts.mm_vision_select_feature,
        "chat_template": VILA_TEMPLATE_NAMES.get(template_name or "qwen2", None),
    }
    model = VILAModel(llm, vision_tower, projector, MediaTokenIds.from_tokenizer(tokenizer), config=config)
    return model, tokenizer, image_processor
