import json

import pytest
import torch
from transformers import AutoConfig

from longvila.model.checkpoint import load_vila, save_vila
from longvila.model.rope import LONGVILA_ROPE_THETA, extend_context, rope_theta


def test_extend_context_rebuilds_rotary_and_round_trips(tiny, media_batch, tmp_path):
    model, tok, ip = tiny
    b = media_batch
    with torch.no_grad():
        before = model.logits(b["input_ids"], b["labels"], b["attention_mask"], b["media"])
    theta = extend_context(model, 131072)
    assert theta == LONGVILA_ROPE_THETA[131072] == rope_theta(model.llm.config)
    inv_freq = model.llm.model.rotary_emb.inv_freq
    torch.testing.assert_close(inv_freq, 1.0 / (theta ** (torch.arange(0, 16, 2).float() / 16)))
    with torch.no_grad():
        after = model.logits(b["input_ids"], b["labels"], b["attention_mask"], b["media"])
    assert not torch.allclose(before, after), "the new base must change the model"

    save_vila(model, tok, ip, tmp_path)
    raw = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert raw["rope_theta"] == theta and raw["rope_scaling"] is None  # what transformers 4.x / VILA read
    assert raw["rope_parameters"]["rope_theta"] == theta
    assert raw["max_position_embeddings"] == raw["model_max_length"] == raw["tokenizer_model_max_length"] == 131072
    assert rope_theta(AutoConfig.from_pretrained(tmp_path / "llm")) == theta
    loaded, _, _ = load_vila(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded.eval().logits(b["input_ids"], b["labels"], b["attention_mask"], b["media"]), after)


def test_extend_context_validation(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="65536"):
        extend_context(model, 65536)
    assert extend_context(model, 65536, theta=5e6) == 5e6
    with pytest.raises(ValueError, match="theta=-1"):
        extend_context(model, 65536, theta=-1)
