"""Causal, document-masked attention on one device (``longvila/distributed/local_attention.py``) against an fp64
reference, and the dispatcher's HF-interface checks."""

import importlib

import pytest
import torch

from longvila.distributed.attention import AttentionDispatcher
from longvila.distributed.document_split import segment_ids
from longvila.distributed.local_attention import local_attention


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
    assert segment_ids(torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1]])).tolist() == [[1, 1, 1, 2, 2, 3, 4, 4]]


def test_single_document_uses_is_causal_without_mask(monkeypatch):
    q, k, v = qkv()
    pos = torch.arange(11).expand(2, 11)

    def boom(*_):
        raise AssertionError("a single document must not be split")

    # the package exports a function named like the module, so fetch the module itself
    monkeypatch.setattr(importlib.import_module("longvila.distributed.local_attention"), "document_pieces", boom)
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
