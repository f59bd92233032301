"""Parameter counts come from the real classes on the meta device: they must equal a real model's, and trainability
must follow the stage and LoRA exactly as the trainer sets it."""

import pytest
import torch

from longvila.model.lora import LLM_TARGETS
from longvila.plan.model_shape import resolve_model_shape


def test_named_shape_counts_equal_a_materialised_model():
    from transformers import AutoModelForCausalLM

    from longvila.model.real_shapes import llm_config

    shape = resolve_model_shape("qwen2-0.5b", num_layers=1, vision_layers=1)
    real = AutoModelForCausalLM.from_config(llm_config("qwen2-0.5b", 1), dtype=torch.bfloat16)
    assert shape.llm_params == sum(p.numel() for p in real.parameters())
    assert shape.tied_embeddings and shape.vocab_size == 151936
    assert shape.tokens_per_frame == 196  # SigLIP-384: 27x27 patches, 2x2 merge


def test_stage_trainability_and_lora():
    full = resolve_model_shape("qwen2-7b", num_layers=2, trains=frozenset({"llm"}))
    assert full.trainable_params == full.llm_params and full.trainable_llm_fraction == 1.0
    assert full.head_trainable and full.embedding_trainable
    lora = resolve_model_shape("qwen2-7b", num_layers=2, trains=frozenset({"llm"}), lora=True)
    h, kv, r = 3584, 512, 8
    adapters = 2 * r * sum(h + out for out in (h, kv, kv, h))  # A (in x r) and B (r x out) for q, k, v, o
    norms = 2 * 2 * h + h  # two per layer, and the final one
    assert len(LLM_TARGETS) == 4
    assert lora.trainable_params == 152064 * h + norms + adapters  # LongLoRA: embedding and norms train
    assert lora.largest_trainable == 152064 * h and not lora.head_trainable
    assert lora.trainable_llm_fraction == 0.0
    everything = resolve_model_shape("qwen2-7b", num_layers=2, trains=frozenset({"llm", "vision_tower",
                                                                                  "mm_projector"}))
    assert everything.trainable_params == everything.total_params


def test_tower_lora_trains_only_its_adapters():
    """``--lora_vision``: peft freezes the tower's weights and trains r=8 adapters on its q, k, v and out_proj."""
    trains = frozenset({"llm", "vision_tower", "mm_projector"})
    full = resolve_model_shape("qwen2-0.5b", num_layers=1, vision_layers=2, trains=trains)
    lora = resolve_model_shape("qwen2-0.5b", num_layers=1, vision_layers=2, trains=trains, lora_vision=True)
    width, r, layers, targets = 1152, 8, 2, 4
    assert lora.trainable_params == full.trainable_params - full.vision_params + layers * targets * 2 * r * width
    assert lora.total_params == full.total_params + layers * targets * 2 * r * width


def test_vila_folder_reads_like_the_named_shape(probe_checkpoint):
    from_folder = resolve_model_shape(str(probe_checkpoint))
    from longvila.plan.measured import LIVE_PROBE

    named = resolve_model_shape(LIVE_PROBE["llm"], num_layers=LIVE_PROBE["llm_layers"],
                                vision_layers=LIVE_PROBE["vision_layers"])
    assert from_folder.total_params == named.total_params
    assert from_folder.trainable_params == named.trainable_params
    assert "VILA folder" in from_folder.source


def test_unknown_model_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such folder, and not a known shape"):
        resolve_model_shape("qwen9-1t")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a VILA-layout folder or an HF LLM folder"):
        resolve_model_shape(str(tmp_path))
