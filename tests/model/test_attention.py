"""The attention dispatcher inside the model: installed per model, matching HF's SDPA path, packing and KV-cache
decoding (the local path itself is tested in ``tests/distributed/test_local_attention.py``)."""

import pytest
import torch

from longvila.distributed.local_attention import local_attention
from tests.distributed.test_local_attention import qkv


def test_dispatcher_given_to_the_model_receives_its_calls(tiny):
    model, _, _ = tiny
    calls = []

    def dispatcher(module, q, k, v, attention_mask=None, scaling=None, position_ids=None, **kwargs):
        calls.append((type(module).__name__, q.shape, k.shape, scaling, position_ids.clone()))
        return local_attention(q, k, v, scale=scaling, position_ids=position_ids) * 0 + 1.0, None

    pos = torch.tensor([[0, 1, 2, 0, 1]])
    embeds = torch.randn(1, 5, 128)
    default = model.llm.config._attn_implementation
    model.set_attention(dispatcher)
    try:
        routed = model.run_backbone(embeds, pos)
    finally:
        model.llm.config._attn_implementation = default
    assert len(calls) == 2  # one per decoder layer
    name, qs, ks, scale, seen_pos = calls[0]
    assert name == "Qwen2Attention" and qs == (1, 8, 5, 16) and ks == (1, 2, 5, 16)
    assert scale == pytest.approx(16**-0.5)
    assert torch.equal(seen_pos, pos)
    assert not torch.allclose(routed, model.run_backbone(embeds, pos)), "dispatcher output must be what the model used"
    with pytest.raises(ValueError, match="callable"):
        model.set_attention(42)


def test_backbone_matches_hf_sdpa_and_packing(tiny):
    """One document: same as plain HF SDPA. Two packed documents: same as running each alone."""
    model, _, _ = tiny
    llm = model.llm
    ids = torch.randint(10, 1900, (1, 12))
    embeds = llm.get_input_embeddings()(ids)
    ours = model.run_backbone(embeds, torch.arange(12)[None])
    llm.config._attn_implementation = "sdpa"
    try:
        hf = llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    finally:
        llm.config._attn_implementation = "longvila"
    torch.testing.assert_close(ours, hf, atol=1e-5, rtol=1e-5)

    packed_pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    packed = model.run_backbone(embeds, packed_pos)
    first = model.run_backbone(embeds[:, :5], torch.arange(5)[None])
    second = model.run_backbone(embeds[:, 5:], torch.arange(7)[None])
    torch.testing.assert_close(packed, torch.cat([first, second], dim=1), atol=1e-5, rtol=1e-5)


def test_kv_cache_decoding_matches_sdpa(tiny):
    """generate() with a KV cache: queries are the last positions (bottom-right causal alignment)."""
    model, _, _ = tiny
    llm = model.llm
    ids = torch.randint(10, 1900, (1, 7))
    ours = llm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        chunked = llm(input_ids=ids[:, :4], use_cache=True)
        rest = llm(input_ids=ids[:, 4:], past_key_values=chunked.past_key_values, use_cache=True).logits
    llm.config._attn_implementation = "sdpa"
    try:
        ref = llm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            full = llm(input_ids=ids).logits
    finally:
        llm.config._attn_implementation = "longvila"
    assert torch.equal(ours, ref)
    torch.testing.assert_close(rest, full[:, 4:], atol=1e-5, rtol=1e-5)
    q, k, v = qkv(s=4)
    with pytest.raises(ValueError, match="more queries"):
        local_attention(q, k[:, :, :2], v[:, :, :2], scale=None, position_ids=None)
