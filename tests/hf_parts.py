"""Pretrained-part folders written the way transformers writes them: an HF Qwen2 causal LM (with tokenizer) and
a full SiglipModel (text + vision towers, as siglip-so400m-patch14-384 ships), both tiny, for stage-1 tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def write_hf_parts(root: Path, with_chat_template: bool = False, seed: int = 0) -> tuple[Path, Path]:
    from transformers import AutoModelForCausalLM, SiglipConfig, SiglipImageProcessor, SiglipModel

    from longvila.model.tiny import IMAGE_SIZE, tiny_llm_config, tiny_vision_config
    from longvila.model.tokenizer import train_tokenizer

    llm_dir, siglip_dir = Path(root) / "qwen2-llm", Path(root) / "siglip-full"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(tmp, seed=seed)
    if not with_chat_template:
        tokenizer.chat_template = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(tiny_llm_config(tokenizer)).save_pretrained(llm_dir)
        vision = tiny_vision_config().to_dict()
        vision["vision_use_head"] = True  # the released SiglipModel has its pooling head
        text = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "max_position_embeddings": 16}
        SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(siglip_dir)
    tokenizer.save_pretrained(llm_dir)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(siglip_dir)
    return llm_dir, siglip_dir
