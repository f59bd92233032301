import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, SiglipVisionModel

from longvila.model.checkpoint import load_vila, save_vila
from longvila.model.lora import apply_llm_lora


def batch_logits(model, b):
    with torch.no_grad():
        return model.logits(b["input_ids"], b["labels"], b["attention_mask"], b["media"])


def perturb(model, seed=1):
    """Move every weight off its init so a silently re-initialised part cannot pass the round trip."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)


def test_save_load_gives_identical_logits(tiny, media_batch, tmp_path):
    model, tok, ip = tiny
    perturb(model)
    save_vila(model, tok, ip, tmp_path / "ckpt")
    loaded, tok2, ip2 = load_vila(tmp_path / "ckpt")
    loaded.eval()
    assert torch.equal(batch_logits(model, media_batch), batch_logits(loaded, media_batch))
    for (name, p), (name2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, p2), name
    assert tok2.get_vocab() == tok.get_vocab()
    assert ip2.size == ip.size
    assert loaded.llm.config._attn_implementation == "longvila"


def test_top_level_config(tiny, tmp_path):
    model, tok, ip = tiny
    model.set_trainable(vision_tower=False, mm_projector=True, llm=True)
    save_vila(model, tok, ip, tmp_path, num_video_frames=32, fps=2.0, model_max_length=4096)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["architectures"] == ["LlavaLlamaModel"]
    assert cfg["llm_cfg"]["model_type"] == "qwen2" and cfg["llm_cfg"]["_name_or_path"] == "./llm"
    assert cfg["vision_tower_cfg"]["model_type"] == "siglip_vision_model"
    assert cfg["mm_projector_cfg"]["mm_projector_type"] == "mlp_downsample"
    assert cfg["hidden_size"] == 128 and cfg["mm_hidden_size"] == 64
    assert cfg["mm_vision_select_layer"] == -2 and cfg["mm_vision_select_feature"] == "cls_patch"
    assert cfg["model_dtype"] == "torch.float32"
    assert cfg["chat_template"] == "qwen2"
    assert cfg["image_aspect_ratio"] == "resize"
    assert (cfg["tune_vision_tower"], cfg["tune_mm_projector"], cfg["tune_language_model"]) == (False, True, True)
    assert (cfg["num_video_frames"], cfg["fps"], cfg["model_max_length"]) == (32, 2.0, 4096)
    assert "longvila" not in (tmp_path / "config.json").read_text()
    # config_updates survive a load/save cycle.
    loaded, tok2, ip2 = load_vila(tmp_path)
    assert loaded.config["num_video_frames"] == 32 and loaded.config["tune_vision_tower"] is False
    save_vila(loaded, tok2, ip2, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["fps"] == 2.0 and again["llm_cfg"] == cfg["llm_cfg"]


def test_subfolders_load_with_plain_transformers(tiny, tmp_path):
    model, tok, ip = tiny
    perturb(model)
    save_vila(model, tok, ip, tmp_path)
    raw_llm_cfg = (tmp_path / "llm" / "config.json").read_text()
    assert "longvila" not in raw_llm_cfg and "attn_implementation" not in raw_llm_cfg

    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    assert llm.config._attn_implementation != "longvila"
    ids = torch.randint(10, 1900, (2, 9))
    with torch.no_grad():
        plain = llm(input_ids=ids).logits
        ours = model.logits(ids, None, None)
    torch.testing.assert_close(plain, ours, atol=1e-5, rtol=1e-5)

    tok2 = AutoTokenizer.from_pretrained(tmp_path / "llm")
    text = "<|im_start|>user\n<video>\nThe passkey is 4711.<|im_end|>\n"
    assert tok2.encode(text) == tok.encode(text) and tok2.decode(tok2.encode(text)) == text

    with safe_open(str(tmp_path / "vision_tower" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys()), "transformers 4.x / VILA key layout"
    tower = SiglipVisionModel.from_pretrained(tmp_path / "vision_tower")
    for name, p in model.vision_tower.state_dict().items():
        assert torch.equal(tower.state_dict()[name], p), name
    proc = AutoImageProcessor.from_pretrained(tmp_path / "vision_tower")
    assert proc.size == {"height": 64, "width": 64}

    proj_cfg = json.loads((tmp_path / "mm_projector" / "config.json").read_text())
    assert proj_cfg["model_type"] == "v2l_projector" and proj_cfg["architectures"] == ["MultimodalProjector"]


def test_bf16_load(tiny_path, media_batch, tmp_path):
    model, tok, ip = load_vila(tiny_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = batch_logits(model, media_batch)
    assert torch.isfinite(logits).all()
    save_vila(model, tok, ip, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_dtype"] == "torch.bfloat16"


def test_unmerged_lora_refuses_to_save(tiny, tmp_path):
    model, tok, ip = tiny
    apply_llm_lora(model)
    with pytest.raises(ValueError, match="merge_lora"):
        save_vila(model, tok, ip, tmp_path)


def test_load_rejects_non_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_vila(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_llama"}))
    with pytest.raises(ValueError, match="llm_cfg"):
        load_vila(tmp_path)


def test_media_tokens_added_when_missing():
    """Released tokenizers may lack the placeholders; VILA's are added as VILA does (no embedding resize)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from longvila.model.checkpoint import ensure_media_tokens
    from longvila.model.tokenizer import single_token_id

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    assert len(tok.encode("<video>", add_special_tokens=False)) > 1
    ensure_media_tokens(tok)
    image, video = single_token_id(tok, "<image>"), single_token_id(tok, "<vila/video>")
    assert image != video and min(image, video) >= len(alphabet)
    ensure_media_tokens(tok)  # idempotent
    assert single_token_id(tok, "<vila/video>") == video and len(tok) == len(alphabet) + 2
