"""Released VILA/LongVILA folders load as-is, and our saves carry what VILA's loader needs.

The VILA-side folders here are written by ``tests/model/vila_reference.py`` (transformers' own save_pretrained of
each part, VILA's top-level key set, VILA's media tokens), not by our ``save_vila``.
"""

import json

import pytest
import torch
from safetensors import safe_open

from longvila.data.template import encode_prompt
from longvila.model.checkpoint import load_vila, save_vila
from tests.model.vila_reference import ProjectorConfig, ReferenceProjector, write_vila_checkpoint

PROJECTOR_CASES = [("linear", "row_major"), ("mlp2x_gelu", "row_major"), ("mlp4x_gelu", "row_major"),
                   ("mlp_downsample", "row_major"), ("mlp_downsample", "column_major"),
                   ("mlp_downsample_2x2_fix", "row_major"), ("mlp_downsample_3x3_fix", "row_major")]


def vila_folder(tiny, root, projector_type="mlp_downsample", column_major=False, **top_level):
    model, tok, ip = tiny
    torch.manual_seed(3)
    reference = ReferenceProjector(ProjectorConfig(projector_type), model.vision_tower.config.hidden_size,
                                   model.llm.config.hidden_size, column_major=column_major)
    write_vila_checkpoint(root, model.llm, tok, model.vision_tower, ip, reference, **top_level)
    return reference


@pytest.mark.parametrize("projector_type,order", PROJECTOR_CASES)
def test_vila_projectors_load_with_vila_outputs(tiny, tmp_path, projector_type, order):
    reference = vila_folder(tiny, tmp_path / "vila", projector_type, column_major=order == "column_major")
    token_order = "column_major" if order == "column_major" else None
    loaded, _, _ = load_vila(tmp_path / "vila", token_order=token_order)
    with safe_open(str(tmp_path / "vila" / "mm_projector" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(loaded.mm_projector.state_dict())
    for side in (4, 5, 7, 27):  # even, odd and SigLIP-384's 27x27 grids
        feats = torch.randn(2, side * side, loaded.mm_projector.mm_hidden_size)
        with torch.no_grad():
            want = reference(feats)
            assert torch.allclose(loaded.mm_projector(feats), want, atol=1e-6), side
            assert loaded.mm_projector.tokens_per_frame(side * side) == want.shape[1]


def test_legacy_order_is_a_real_difference(tiny, tmp_path):
    """Loading a 2024 checkpoint without --mm_projector_token_order column_major gives other outputs."""
    reference = vila_folder(tiny, tmp_path / "vila", "mlp_downsample", column_major=True)
    loaded, _, _ = load_vila(tmp_path / "vila")
    feats = torch.randn(1, 36, loaded.mm_projector.mm_hidden_size)
    with torch.no_grad():
        assert not torch.allclose(loaded.mm_projector(feats), reference(feats), atol=1e-3)


def test_token_order_is_kept_by_later_saves(tiny, tmp_path):
    vila_folder(tiny, tmp_path / "vila", "mlp_downsample", column_major=True)
    loaded, tok, ip = load_vila(tmp_path / "vila", token_order="column_major")
    save_vila(loaded, tok, ip, tmp_path / "ours")
    again, _, _ = load_vila(tmp_path / "ours")
    assert again.mm_projector.config.token_order == "column_major"
    with pytest.raises(ValueError, match="only exists for mlp_downsample"):
        vila_folder(tiny, tmp_path / "lin", "linear")
        load_vila(tmp_path / "lin", token_order="column_major")


def test_vila_video_placeholder_expands_like_ours(tiny, tmp_path):
    vila_folder(tiny, tmp_path / "vila")
    loaded, tok, _ = load_vila(tmp_path / "vila")
    assert loaded.tokenizer_ids.video == tok.convert_tokens_to_ids("<vila/video>")
    frames = torch.randn(3, 3, 64, 64)
    logits = []
    for spelling in ("<vila/video>", "<video>"):
        ids = torch.tensor([encode_prompt(tok, [{"from": "human", "value": f"{spelling}\nWhat is shown?"}])])
        assert int((ids == loaded.tokenizer_ids.video).sum()) == 1
        with torch.no_grad():
            logits.append(loaded.logits(ids, torch.full_like(ids, -100), torch.ones_like(ids, dtype=torch.bool),
                                        [[frames]]))
    assert torch.equal(logits[0], logits[1]) and logits[0].shape[1] == ids.shape[1] - 1 + 3 * (4 + 1)


@pytest.mark.parametrize("feature,value,named", [
    ("s2", True, "s2=True"), ("dynamic_s2", True, "dynamic_s2=True"), ("ps3", True, "ps3=True"),
    ("image_aspect_ratio", "dynamic", "image_aspect_ratio='dynamic'"),
    ("video_encoder", '{"_target_": "llava.model.encoders.TSPVideoEncoder", "pool_sizes": [[8, 1, 1]]}',
     "video_encoder=llava.model.encoders.TSPVideoEncoder"),
    ("image_encoder", {"_target_": "llava.model.encoders.SomethingElse"}, "image_encoder=llava"),
    ("num_time_tokens", 100, "num_time_tokens=100"),
])
def test_nvila_features_are_refused_in_one_line(tiny, tmp_path, feature, value, named):
    vila_folder(tiny, tmp_path / "nvila", **{feature: value})
    with pytest.raises(ValueError) as error:
        load_vila(tmp_path / "nvila")
    assert named in str(error.value) and "\n" not in str(error.value)


def test_saved_folder_has_what_vila_needs(tiny, tmp_path):
    """The files and config keys VILA's loader reads from a released checkpoint (tests/model/vila_reference.py)."""
    vila_folder(tiny, tmp_path / "released")
    model, tok, ip = load_vila(tmp_path / "released")
    out = save_vila(model, tok, ip, tmp_path / "ours")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and any("llava" in a.lower() for a in cfg["architectures"])
    for key in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg", "hidden_size", "mm_hidden_size",
                "mm_vision_select_layer", "mm_vision_select_feature", "num_video_frames", "fps",
                "image_aspect_ratio", "model_dtype"):
        assert cfg.get(key) is not None, key
    assert cfg["resume_path"] == cfg["_name_or_path"] == str(out.resolve())  # fresh, not the released path
    llm_files = {p.name for p in (out / "llm").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "vocab.json", "merges.txt"} <= llm_files
    tok_cfg = json.loads((out / "llm" / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == tok.chat_template
    added = {v["content"] for v in tok_cfg["added_tokens_decoder"].values()}
    assert {"<image>", "<vila/video>", "<|im_start|>", "<|im_end|>"} <= added
    llm_cfg = json.loads((out / "llm" / "config.json").read_text())
    assert llm_cfg["rope_theta"] == model.llm.config.rope_parameters["rope_theta"]
    assert (out / "vision_tower" / "preprocessor_config.json").is_file()
    with safe_open(str(out / "vision_tower" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    proj_cfg = json.loads((out / "mm_projector" / "config.json").read_text())
    assert proj_cfg["model_type"] == "v2l_projector" and proj_cfg["architectures"] == ["MultimodalProjector"]


def test_slow_tokenizer_files_reproduce_the_ids(tiny, tmp_path):
    """vocab.json + merges.txt + tokenizer_config.json alone (no tokenizer.json) give the same ids."""
    import shutil

    from transformers import Qwen2Tokenizer

    model, tok, ip = tiny
    out = save_vila(model, tok, ip, tmp_path / "ours")
    slow = tmp_path / "slow"
    slow.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(out / "llm" / name, slow / name)
    slow_tok = Qwen2Tokenizer.from_pretrained(slow)
    text = "<|im_start|>user\n<image>\nThe passkey is 90210. Hello world!<|im_end|>\n"
    assert slow_tok.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert slow_tok.chat_template == tok.chat_template


def test_sentencepiece_model_travels_with_the_llama_tokenizer(tmp_path):
    import sentencepiece as spm

    from longvila.model.tiny import build_tiny_checkpoint

    model, tok, ip = load_vila(build_tiny_checkpoint(tmp_path / "llama", arch="llama"))
    out = save_vila(model, tok, ip, tmp_path / "ours")
    sp = spm.SentencePieceProcessor(model_file=str(out / "llm" / "tokenizer.model"))
    text = "The passkey is 90210. Hello world!"
    assert sp.encode(text) == tok.encode(text, add_special_tokens=False)
