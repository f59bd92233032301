"""The embedded default model: a tiny Qwen2 + SigLIP VILA checkpoint built locally, offline, in seconds.

Every stage, test and benchmark can run without downloads by pointing at ``tiny_model_path()``. It is written in
VILA layout through ``save_vila`` and read back through ``load_vila``, so the tiny path exercises exactly the code
a real checkpoint does. Built once per ``$LONGVILA_HOME`` (default ``~/.cache/longvila``), atomically: each caller
builds in a private temp folder and renames it into place, so concurrent torchrun ranks never see half a model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from longvila.model.checkpoint import save_vila
from longvila.model.projector import MultimodalProjector, MultimodalProjectorConfig
from longvila.model.tokenizer import train_tokenizer
from longvila.model.vlm import MediaTokenIds, VILAModel

TINY_NAME = "tiny-v2"
IMAGE_SIZE, PATCH_SIZE = 64, 16  # 4x4 = 16 patches -> 4 tokens per frame after the 2x2 merge
LLM_ARCHS = ("qwen2", "llama")


def longvila_home() -> Path:
    return Path(os.environ.get("LONGVILA_HOME", "~/.cache/longvila")).expanduser()


def tiny_llm_config(tokenizer, arch: str = "qwen2"):
    """Tiny GQA decoder (8 q / 2 kv heads, head_dim 16) with Qwen2's or Llama's architecture."""
    from transformers import LlamaConfig, Qwen2Config

    if arch not in LLM_ARCHS:
        raise ValueError(f"unknown tiny LLM arch {arch!r}; expected one of {LLM_ARCHS}")
    cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=256,
        tie_word_embeddings=False,
        max_position_embeddings=2048,  # a short-context base that stage 4 extends
        rope_theta=10000.0,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vision_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vision_use_head=False,  # VILA uses hidden_states[-2]; a pooling head would be dead weight
    )


def tiny_image_processor():
    from transformers import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build_tiny_model(
    tokenizer, arch: str = "qwen2", projector_type: str = "mlp_downsample", seed: int = 0
) -> VILAModel:
    """Freshly initialised tiny VILAModel (deterministic for a seed; the global RNG is left untouched)."""
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = AutoModelForCausalLM.from_config(tiny_llm_config(tokenizer, arch))
        vision_tower = SiglipVisionModel(tiny_vision_config())
        projector = MultimodalProjector(
            MultimodalProjectorConfig(projector_type), vision_tower.config.hidden_size, llm.config.hidden_size
        )
    return VILAModel(llm, vision_tower, projector, MediaTokenIds.from_tokenizer(tokenizer))


def build_tiny_checkpoint(out_dir: str | os.PathLike, arch: str = "qwen2", seed: int = 0) -> Path:
    """Train the tokenizer, build the tiny model and write it in VILA layout to ``out_dir``."""
    if arch not in LLM_ARCHS:
        raise ValueError(f"unknown tiny LLM arch {arch!r}; expected one of {LLM_ARCHS}")
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tok-") as tmp:
        tokenizer = train_tokenizer(tmp, seed=seed, kind=arch)
        model = build_tiny_model(tokenizer, arch=arch, seed=seed)
        save_vila(model, tokenizer, tiny_image_processor(), out)
    return out


def tiny_model_path() -> Path:
    """Path of the cached tiny default checkpoint, building it on first use (safe under concurrent callers)."""
    home = longvila_home()
    final = home / TINY_NAME
    if (final / "config.json").is_file():
        return final
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}.", dir=home))
    try:
        build_tiny_checkpoint(tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
