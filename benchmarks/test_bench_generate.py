"""Greedy generation with a KV cache against a full forward per token (run: ``pytest benchmarks/ --benchmark-only``).

The embedded tiny VLM answers a V-NIAH question after a long video of cached frame features, generating exactly
``NEW_TOKENS`` tokens (no stop token), as ``--scoring generate`` does. Ours: one prefill, then single-token steps on
the cache (``longvila.eval.decode``). Baseline, in the same process: the full-forward path that sequence-parallel
runs use (``kv_cache=False``). Both must produce the same tokens. Records ``ratio_vs_baseline`` (baseline / ours).
"""

from __future__ import annotations

import pytest
import torch

from bench_timing import ON_GPU, median_seconds, record, run_benchmark

FRAMES = 4096 if ON_GPU else 512  # 5 tokens per frame in the tiny model: about 20K / 2.6K prompt tokens
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def haystack_prompt():
    from longvila.eval.vniah import COLOUR_QUESTION, frame_placeholder, needle_prompt
    from longvila.model.checkpoint import load_vila
    from longvila.model.tiny import tiny_model_path

    model, tokenizer, _ = load_vila(tiny_model_path())
    model.to("cuda" if ON_GPU else "cpu").eval()
    g = torch.Generator().manual_seed(0)
    features = torch.randn(FRAMES, model.tokens_per_frame, model.llm.config.hidden_size, generator=g)
    ids, labels = needle_prompt(tokenizer, COLOUR_QUESTION, "Red.")
    return model, ids[labels == -100], features, [[frame_placeholder(FRAMES)]]


def test_generate_with_kv_cache(benchmark, rounds, haystack_prompt):
    from longvila.eval.scoring import greedy_generate
    from longvila.eval.vniah import cached_frame_features

    benchmark.group = "greedy-generate"
    model, prompt, features, media = haystack_prompt
    results = {}

    def generate(kv_cache):
        def run():
            results[kv_cache] = greedy_generate(model, prompt, set(), NEW_TOKENS, media=media, kv_cache=kv_cache)
        return run

    with cached_frame_features(model, features.to(next(model.parameters()).device)):
        ours = run_benchmark(benchmark, generate(True), rounds)
        base = median_seconds(generate(False), rounds["rounds"], rounds["warmup_rounds"])
    assert results[True] == results[False] and len(results[True]) == NEW_TOKENS
    record(benchmark, ours, base, "a full forward per generated token (kv_cache=False)",
           device_name=torch.cuda.get_device_name() if ON_GPU else "cpu",
           shape=f"{FRAMES} frames ({int(prompt.numel()) - 1 + FRAMES * (model.tokens_per_frame + 1)} prompt "
                 f"tokens), {NEW_TOKENS} new tokens, tiny VLM fp32")
