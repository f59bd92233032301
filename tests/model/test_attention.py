import importlib

import pytest
import torch

from longvila.distributed.attention import AttentionDispatcher
from longvila.model.attention import local_attention, segment_ids


def reference_attention(q, k, v, scale, position_ids):
    """float64 softmax attention with an explicit causal+same-document mask; returns (B, S, H, D)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).double()
    v = v.repeat_interleave(groups, dim=1).double()
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    s = q.shape[2]
    seg = segment_ids(position_ids)
    allowed = torch.ones(s, s, dtype=torch.bool).tril() & (seg[:, :, None] == seg[:, None, :])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).float()


def qkv(b=2, hq=8, hkv=2, s=11, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, s, d, generator=g)
    return q, torch.randn(b, hkv, s, d, generator=g), torch.randn(b, hkv, s, d, generator=g)


def test_segment_ids_from_positions():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 4, 0, 1, 2, 3]])
    assert segment_ids(pos).tolist() == [[1, 1, 1, 2, 2, 3], [0, 0, 1, 1, 1, 1]]


def test_single_document_uses_is_causal_without_mask(monkeypatch):
    q, k, v = qkv()
    pos = torch.arange(11).expand(2, 11)

    def boom(*_):
        raise AssertionError("a single document must not be split")

    # the package exports a function of the module's name, so fetch the module itself
    monkeypatch.setattr(importlib.import_module("longvila.distributed.block_attention"), "document_pieces", boom)
    out = local_attention(q, k, v, scale=0.25, position_ids=pos)
    assert out.shape == (2, 11, 8, 16)
    torch.testing.assert_close(out, reference_attention(q, k, v, 0.25, pos), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local_attention(q, k, v, scale=0.25, position_ids=None), out)


@pytest.mark.parametrize("hkv", [8, 2, 1])
def test_packed_documents_never_attend_across(hkv):
    q, k, v = qkv(hkv=hkv)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1]])
    out = local_attention(q, k, v, scale=0.25, position_ids=pos)
    torch.testing.assert_close(out, reference_attention(q, k, v, 0.25, pos), atol=1e-5, rtol=1e-5)
    # Document 2 of row 0 (tokens 4..6) computed alone gives the same output.
    alone = local_attention(q[:1, :, 4:7], k[:1, :, 4:7], v[:1, :, 4:7], scale=0.25, position_ids=None)
    torch.testing.assert_close(out[:1, 4:7], alone, atol=1e-5, rtol=1e-5)


def test_bad_head_counts():
    q, k, v = qkv(hq=6, hkv=4)
    with pytest.raises(ValueError, match="6"):
        local_attention(q, k, v, scale=None, position_ids=None)


def test_interface_function_rejects_masks_and_dropout():
    q, k, v = qkv()
    longvila_attention = AttentionDispatcher()
    with pytest.raises(ValueError, match="attention_mask"):
        longvila_attention(None, q, k, v, torch.zeros(2, 1, 11, 11), scaling=0.25)
    with pytest.raises(ValueError, match="dropout"):
        longvila_attention(None, q, k, v, None, scaling=0.25, dropout=0.1)
    out, weights = longvila_attention(None, q, k, v, None, scaling=0.25, position_ids=None, sliding_window=None)
    assert weights is None and out.shape == (2, 11, 8, 16)


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
