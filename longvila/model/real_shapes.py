"""Real model shapes with few layers: what memory, speed and compatibility checks run on.

The embedded tiny model hides what real shapes show (a 151,936-token vocabulary, 8,960-wide MLPs, 27x27 SigLIP
grids). These builders write a VILA-layout checkpoint with a released model's exact layer shapes and vocabulary
but only a few decoder/encoder layers, with random weights, so it fits a 24 GB CPU box and needs no download.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

_LLM_FIELDS = ("arch", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
               "tie_word_embeddings", "rope_theta", "max_position_embeddings")
LLM_SHAPES = {name: dict(zip(_LLM_FIELDS, row)) for name, row in {
    # name        arch     hidden  mlp    q   kv  vocab   tied   theta positions
    "qwen2-0.5b": ("qwen2", 896,   4864,  14, 2,  151936, True,  1e6, 32768),
    "qwen2-1.5b": ("qwen2", 1536,  8960,  12, 2,  151936, True,  1e6, 32768),
    "qwen2-7b":   ("qwen2", 3584, 18944,  28, 4,  152064, False, 1e6, 32768),
    "llama3-8b":  ("llama", 4096, 14336,  32, 8,  128256, False, 5e5, 8192),
    "llama2-7b":  ("llama", 4096, 11008,  32, 32, 32000,  False, 1e4, 4096),
    "llama3.2-1b": ("llama", 2048, 8192,  32, 8,  128256, True,  5e5, 131072),
}.items()}
"""Layer shapes of released LLMs (their HF config.json values); ``num_hidden_layers`` is chosen per use."""

RELEASED_LAYERS = {"qwen2-0.5b": 24, "qwen2-1.5b": 28, "qwen2-7b": 28, "llama3-8b": 32, "llama2-7b": 32,
                   "llama3.2-1b": 16, "siglip-so400m": 27}
"""Layer counts of the released models, for planning at full depth (``longvila.plan``)."""

VISION_SHAPES = {
    "siglip-so400m": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384,
                          patch_size=14),
}


def llm_config(name: str, num_layers: int):
    from transformers import LlamaConfig, Qwen2Config

    if name not in LLM_SHAPES:
        raise ValueError(f"unknown LLM shape {name!r}; known: {', '.join(LLM_SHAPES)}")
    shape = dict(LLM_SHAPES[name])
    cls = Qwen2Config if shape.pop("arch") == "qwen2" else LlamaConfig
    return cls(num_hidden_layers=num_layers, **shape)


def vision_config(name: str, num_layers: int):
    from transformers import SiglipVisionConfig

    if name not in VISION_SHAPES:
        raise ValueError(f"unknown vision shape {name!r}; known: {', '.join(VISION_SHAPES)}")
    return SiglipVisionConfig(num_hidden_layers=num_layers, vision_use_head=False, **VISION_SHAPES[name])


def build_real_shape_checkpoint(out_dir: str | os.PathLike, llm: str = "qwen2-1.5b", llm_layers: int = 2,
                                vision: str = "siglip-so400m", vision_layers: int = 2,
                                dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """Write a VILA-layout folder with real layer shapes (random weights), stored in ``dtype`` like releases."""
    from transformers import AutoModelForCausalLM, SiglipImageProcessorPil, SiglipVisionModel

    from longvila.model.checkpoint import save_vila
    from longvila.model.projector import MultimodalProjector, MultimodalProjectorConfig
    from longvila.model.tokenizer import train_tokenizer
    from longvila.model.vlm import MediaTokenIds, VILAModel

    with tempfile.TemporaryDirectory(prefix="tok-") as tmp:
        tokenizer = train_tokenizer(tmp, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = llm_config(llm, llm_layers)
        cfg.eos_token_id, cfg.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        language = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        tower = SiglipVisionModel(vision_config(vision, vision_layers)).to(dtype)
        projector = MultimodalProjector(MultimodalProjectorConfig("mlp_downsample"), tower.config.hidden_size,
                                        cfg.hidden_size).to(dtype)
    model = VILAModel(language, tower, projector, MediaTokenIds.from_tokenizer(tokenizer))
    size = tower.config.image_size
    return save_vila(model, tokenizer, SiglipImageProcessorPil(size={"height": size, "width": size}), out_dir)
