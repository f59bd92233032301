"""KV-cache greedy decoding against the full-forward-per-token reference on the real tiny VLM with a video."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from longvila.distributed.attention import AttentionDispatcher
from longvila.distributed.mesh import SequenceParallelConfig
from longvila.eval.decode import cached_greedy_generate
from longvila.eval.scoring import greedy_generate, uses_kv_cache
from longvila.eval.vniah import COLOUR_QUESTION, cached_frame_features, frame_placeholder, needle_prompt


@pytest.fixture(scope="module")
def video_prompt(tiny_path):
    """The tiny VLM (weights perturbed so that greedy decoding does not repeat one token), a V-NIAH prompt over
    9 frames of random cached features, and its media."""
    from longvila.model.checkpoint import load_vila

    model, tokenizer, _ = load_vila(tiny_path)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.llm.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    n, tokens, hidden = 9, model.tokens_per_frame, model.llm.config.hidden_size
    features = torch.randn(n, tokens, hidden, generator=g)
    ids, labels = needle_prompt(tokenizer, COLOUR_QUESTION, "Red.")
    return model.eval(), ids[labels == -100], features, [[frame_placeholder(n)]]


def test_cached_decoding_equals_a_full_forward_per_token(video_prompt):
    model, prompt, features, media = video_prompt
    with cached_frame_features(model, features):
        cached = greedy_generate(model, prompt, set(), max_new_tokens=12, media=media)
        full = greedy_generate(model, prompt, set(), max_new_tokens=12, media=media, kv_cache=False)
        assert len(set(full)) > 2, "the reference continuation is degenerate; the comparison would prove little"
        assert cached == full
        # a stop token ends the generation before it; the cap holds exactly
        assert greedy_generate(model, prompt, {full[3]}, 12, media=media) == full[:full.index(full[3])]
        assert cached_greedy_generate(model, prompt, set(), 1, media=media) == full[:1]


def test_decode_steps_bypass_the_block_backend(video_prompt, monkeypatch):
    """With a block backend at SP=1 (the Triton/flash-attn case), the prefill runs on the block backend and every
    single-token step attends locally over the cache; the tokens still equal the full-forward reference."""
    import longvila.distributed.attention as dispatch

    model, prompt, features, media = video_prompt
    calls, blocked = [], dispatch.sequence_parallel_attention

    def counting(query, *args, **kwargs):
        calls.append(query.shape[2])
        return blocked(query, *args, **kwargs)

    monkeypatch.setattr(dispatch, "sequence_parallel_attention", counting)
    layers = model.llm.config.num_hidden_layers
    default = model.llm.config._attn_implementation
    model.set_attention(AttentionDispatcher(SequenceParallelConfig(), None, "math"))
    try:
        with cached_frame_features(model, features):
            cached = greedy_generate(model, prompt, set(), max_new_tokens=5, media=media)
            assert len(calls) == layers and len(set(calls)) == 1  # the prefill only, at the full length
            full = greedy_generate(model, prompt, set(), max_new_tokens=5, media=media, kv_cache=False)
    finally:
        model.llm.config._attn_implementation = default
    assert cached == full


def test_kv_cache_choice_follows_sequence_parallelism():
    sharded = SimpleNamespace(sp=SequenceParallelConfig(2))
    unsharded = SimpleNamespace(sp=SequenceParallelConfig(1))
    assert uses_kv_cache(None) and uses_kv_cache(unsharded) and not uses_kv_cache(sharded)
    assert not uses_kv_cache(unsharded, kv_cache=False)
    with pytest.raises(ValueError, match="unsharded"):
        uses_kv_cache(sharded, kv_cache=True)


def test_bad_prompt_is_refused(video_prompt):
    model = video_prompt[0]
    with pytest.raises(ValueError, match="1-D"):
        cached_greedy_generate(model, torch.tensor([[1, 2]]), set(), 3)
