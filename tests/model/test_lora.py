import pytest
import torch

from longvila.model.checkpoint import load_vila, save_vila
from longvila.model.lora import apply_llm_lora, apply_vision_lora, has_lora, merge_lora


def randomise_lora_b(module, seed=0):
    """peft initialises lora_B to zero (a no-op adapter); make the adapters matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def logits(model, b):
    with torch.no_grad():
        return model.logits(b["input_ids"], b["labels"], b["attention_mask"], b["media"])


def test_llm_lora_trainable_set(tiny):
    model, _, _ = tiny
    model.set_trainable(vision_tower=False, mm_projector=True, llm=False)
    apply_llm_lora(model, r=8, alpha=16)
    assert has_lora(model.llm)
    trainable = {n for n, p in model.llm.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert len(lora) == 2 * 4 * 2  # A and B for q/k/v/o in 2 layers
    extras = trainable - lora
    assert extras and all("embed_tokens" in n or "norm" in n for n in extras)
    assert any(n.endswith("model.norm.weight") for n in extras) and any("input_layernorm" in n for n in extras)
    frozen = {n for n, p in model.llm.named_parameters() if not p.requires_grad}
    assert any("q_proj.base_layer.weight" in n for n in frozen) and any("lm_head" in n for n in frozen)
    assert any("mlp" in n for n in frozen) and not any("mlp" in n for n in trainable)
    # Other parts keep what set_trainable said.
    assert all(p.requires_grad for p in model.mm_projector.parameters())
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    lora_a = next(m for n, m in model.llm.named_modules() if n.endswith("q_proj"))
    assert lora_a.r["default"] == 8 and lora_a.scaling["default"] == 2.0
    with pytest.raises(ValueError, match="already"):
        apply_llm_lora(model)


def test_lora_training_step_and_merge_matches(tiny, media_batch, tmp_path):
    model, tok, ip = tiny
    model.set_trainable(vision_tower=False, mm_projector=False, llm=False)
    apply_llm_lora(model)
    randomise_lora_b(model.llm)
    out = model(**media_batch)
    out.loss_sum.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)

    wrapped = logits(model, media_batch)
    merge_lora(model)
    assert not has_lora(model.llm)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    merged = logits(model, media_batch)
    torch.testing.assert_close(merged, wrapped, atol=1e-5, rtol=1e-5)
    assert model.llm.config._attn_implementation == "longvila"

    save_vila(model, tok, ip, tmp_path)
    loaded, _, _ = load_vila(tmp_path)
    assert torch.equal(logits(loaded.eval(), media_batch), merged)


def test_vision_lora_and_merge(tiny, media_batch):
    model, _, _ = tiny
    apply_vision_lora(model, r=4, alpha=8)
    trainable = [n for n, p in model.vision_tower.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # q/k/v/out_proj in 2 encoder layers
    randomise_lora_b(model.vision_tower, seed=3)
    frames = torch.randn(2, 3, 64, 64)
    wrapped_feats = model.encode_frames(frames)
    wrapped = logits(model, media_batch)
    merge_lora(model)
    assert not has_lora(model.vision_tower)
    torch.testing.assert_close(model.encode_frames(frames), wrapped_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(model, media_batch), wrapped, atol=1e-5, rtol=1e-5)


def test_bad_rank(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="r=0"):
        apply_llm_lora(model, r=0)
