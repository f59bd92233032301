"""Greedy decoding with a KV cache: the prompt (media included) runs through the LLM once, then one token per step.

Why: without a cache every generated token re-runs the whole prompt, so ``--scoring generate`` on a long video
costs ``max_new_tokens`` full forwards. With the cache it costs one forward plus one single-token step per
generated token, each attending over the cached keys.

The prompt goes through the model's own path (``build_sequence``: media expansion and ``frame_encoder``, so
V-NIAH's cached frame features apply) and the LLM backbone with an HF :class:`~transformers.DynamicCache`. The
next token is the argmax of ``lm_head`` at the last position, in fp32, as teacher-forced scoring computes it.
Decode steps attend locally (``AttentionDispatcher`` runs a step with fewer queries than keys on one device), so
this path is for unsharded sequences; under sequence parallelism :func:`longvila.eval.scoring.greedy_generate`
re-runs the sharded forward instead.
"""

from __future__ import annotations

import torch

from longvila.constants import IGNORE_INDEX
from longvila.model.loss import lm_head_logits


def _next_token(hidden: torch.Tensor, weight: torch.Tensor) -> int:
    """Argmax of the logits at the last position (the same fp32 arithmetic as teacher-forced scoring)."""
    return int(lm_head_logits(hidden[0, -1:], weight).argmax())


def cached_greedy_generate(model, prompt_ids: torch.Tensor, stop_ids: set[int], max_new_tokens: int,
                           media=None) -> list[int]:
    """Greedy continuation of the 1-D ``prompt_ids`` with a KV cache, without the stop token.

    Returns at most ``max_new_tokens`` ids; stops before the first id in ``stop_ids``.
    """
    from transformers import DynamicCache

    if prompt_ids.dim() != 1 or prompt_ids.numel() == 0:
        raise ValueError(f"prompt_ids must be a non-empty 1-D tensor, got shape {tuple(prompt_ids.shape)}")
    device = next(model.parameters()).device
    ids = prompt_ids[None].to(device)
    embed, weight = model.llm.get_input_embeddings(), model.llm.get_output_embeddings().weight
    generated: list[int] = []
    with torch.no_grad():
        seq = model.build_sequence(ids, torch.full_like(ids, IGNORE_INDEX), torch.ones_like(ids, dtype=torch.bool),
                                   media)
        cache = DynamicCache(config=model.llm.config)
        hidden = model.run_backbone(seq.inputs_embeds, seq.position_ids, past_key_values=cache)
        position = int(seq.position_ids[0, -1]) + 1
        for step in range(max_new_tokens):
            token = _next_token(hidden, weight)
            if token in stop_ids:
                break
            generated.append(token)
            if step + 1 == max_new_tokens:
                break
            token_ids = torch.tensor([[token]], device=device)
            hidden = model.run_backbone(embed(token_ids), torch.tensor([[position]], device=device),
                                        past_key_values=cache)
            position += 1
    return generated


__all__ = ["cached_greedy_generate"]
