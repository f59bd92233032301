import json
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import longvila.model.tiny as tiny_mod
from longvila.model.checkpoint import load_vila, save_vila
from longvila.model.tiny import build_tiny_checkpoint, tiny_model_path


def test_cached_layout_and_shapes(tiny_path):
    assert tiny_path.name == "tiny-v2"
    for sub in ("llm", "vision_tower", "mm_projector"):
        assert (tiny_path / sub / "config.json").is_file()
    assert (tiny_path / "vision_tower" / "preprocessor_config.json").is_file()
    cfg = json.loads((tiny_path / "config.json").read_text())
    llm = cfg["llm_cfg"]
    assert (llm["hidden_size"], llm["num_hidden_layers"], llm["num_attention_heads"], llm["num_key_value_heads"]) == (
        128,
        2,
        8,
        2,
    )
    assert (llm["head_dim"], llm["intermediate_size"], llm["max_position_embeddings"]) == (16, 256, 2048)
    assert llm["tie_word_embeddings"] is False and llm["rope_parameters"]["rope_theta"] == 10000.0
    vis = cfg["vision_tower_cfg"]
    assert (vis["image_size"], vis["patch_size"], vis["hidden_size"], vis["num_hidden_layers"]) == (64, 16, 64, 2)
    assert (vis["num_attention_heads"], vis["intermediate_size"]) == (4, 128)
    assert tiny_model_path() == tiny_path  # cached: same folder, no rebuild


def test_build_is_fast_and_deterministic(tmp_path):
    build_tiny_checkpoint(tmp_path / "warm")  # imports and first-call costs out of the timing
    start = time.perf_counter()
    build_tiny_checkpoint(tmp_path / "a")
    assert time.perf_counter() - start < 10.0
    parts = ("llm/model.safetensors", "vision_tower/model.safetensors", "mm_projector/model.safetensors")
    for part in parts + ("llm/tokenizer.json",):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "warm" / part).read_bytes(), part


def test_concurrent_callers_share_one_build(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGVILA_HOME", str(tmp_path))
    results, errors = [], []

    def call():
        try:
            results.append(tiny_model_path())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-v2"], "temp folders must be cleaned up"
    load_vila(results[0])


def test_lost_race_keeps_winner(tmp_path, monkeypatch):
    """If another process renames its build into place first, ours is discarded and theirs is returned."""
    monkeypatch.setenv("LONGVILA_HOME", str(tmp_path))
    real_build = tiny_mod.build_tiny_checkpoint

    def build_while_other_wins(out):
        real_build(tmp_path / "tiny-v2")  # the "other process" finishes first
        (tmp_path / "tiny-v2" / "winner").write_text("1")
        return real_build(out)

    monkeypatch.setattr(tiny_mod, "build_tiny_checkpoint", build_while_other_wins)
    path = tiny_model_path()
    assert (path / "winner").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-v2"]


def test_llama_variant_round_trip(tmp_path):
    build_tiny_checkpoint(tmp_path / "llama", arch="llama")
    model, tok, ip = load_vila(tmp_path / "llama")
    model.eval()
    assert type(model.llm).__name__ == "LlamaForCausalLM"
    assert type(tok).__name__ == "LlamaTokenizer"
    assert model.llm.config.num_key_value_heads == 2 and model.llm.config.head_dim == 16
    plain_tok = AutoTokenizer.from_pretrained(tmp_path / "llama" / "llm")
    text = "<|im_start|>user\n<image>\nWhat shape is it?<|im_end|>\n"
    assert plain_tok.encode(text) == tok.encode(text)
    img, nl = model.tokenizer_ids.image, model.tokenizer_ids.newline
    ids = torch.tensor([tok.encode(text)])
    media = [[torch.randn(1, 3, 64, 64)]]
    out = model(ids, ids.masked_fill(ids == img, -100), None, media)
    assert torch.isfinite(out.loss_sum) and int(out.num_tokens) > 0
    assert nl == tok.encode("\n", add_special_tokens=False)[0]

    save_vila(model, tok, ip, tmp_path / "again")
    loaded, _, _ = load_vila(tmp_path / "again")
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.logits(ids, None, None, media), loaded.logits(ids, None, None, media))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "again" / "llm")
    text_ids = torch.randint(10, 1900, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=text_ids).logits, model.logits(text_ids), atol=1e-5, rtol=1e-5)


def test_unknown_arch(tmp_path):
    with pytest.raises(ValueError, match="mamba"):
        build_tiny_checkpoint(tmp_path, arch="mamba")
