"""Stage 1's start from pretrained parts: an HF Qwen2 folder + a full SiglipModel folder + a fresh projector."""

import json

import pytest
import torch

from longvila.model.checkpoint import load_vila, save_vila
from longvila.model.from_parts import Parts, build_from_parts
from tests.hf_parts import write_hf_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_hf_parts(tmp_path_factory.mktemp("parts"))


@pytest.mark.parametrize("projector", ["mlp_downsample", "mlp2x_gelu", "linear", "mlp3x_gelu",
                                       "mlp_downsample_3x3_fix"])
def test_parts_keep_pretrained_weights_and_vision_features(parts, projector):
    from transformers import AutoModelForCausalLM, SiglipModel

    llm_dir, siglip_dir = parts
    model, tok, ip = build_from_parts(Parts(llm_dir, siglip_dir, projector, chat_template="qwen2"))
    full = SiglipModel.from_pretrained(siglip_dir)
    for name, value in full.vision_model.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], value), name
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    for name, value in llm.state_dict().items():
        assert torch.equal(model.llm.state_dict()[name], value), name
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.mm_projector(full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2])
        assert torch.equal(model.encode_frames(pixels), want)
    assert model.mm_projector.config.mm_projector_type == projector
    assert tok.chat_template is not None and model.config["chat_template"] == "qwen2"


def test_parts_save_as_a_vila_checkpoint_that_reloads(parts, tmp_path):
    model, tok, ip = build_from_parts(Parts(*parts, chat_template="qwen2", mm_vision_select_layer=-1))
    save_vila(model, tok, ip, tmp_path / "ckpt")
    loaded, _, _ = load_vila(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["mm_vision_select_layer"] == -1 and cfg["vision_tower_cfg"]["model_type"] == "siglip_vision_model"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.encode_frames(pixels), model.encode_frames(pixels))


def test_llm_without_template_needs_chat_template_flag(parts):
    with pytest.raises(ValueError, match="--chat_template qwen2|llama3"):
        build_from_parts(Parts(*parts))


@pytest.mark.parametrize("which,flag,says", [(0, "--vision_tower", "--model_name_or_path"),
                                             (1, "--model_name_or_path", "--vision_tower")])
def test_swapped_folders_name_the_right_flag(parts, which, flag, says):
    swapped = Parts(parts[1], parts[0], chat_template="qwen2")
    with pytest.raises(ValueError) as error:
        build_from_parts(swapped)
    assert "\n" not in str(error.value) and "pass it as" in str(error.value)


def test_hf_llm_folder_given_to_init_from_names_the_flag(parts):
    with pytest.raises(ValueError, match=r"HF causal LM folder \(qwen2\).*pass it as --model_name_or_path"):
        load_vila(parts[0])
