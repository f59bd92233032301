"""Stage-4 context extension: change the RoPE base of a live model (LongVILA's only llm/config.json change).

Setting ``config.rope_parameters`` alone is not enough: transformers computes ``inv_freq`` once, when the rotary
module is built, so a live model would keep training with the old base. ``extend_context`` rebuilds it.
"""

from __future__ import annotations

# LongVILA's RoPE bases per context length (DESIGN); rope_scaling stays untouched.
LONGVILA_ROPE_THETA = {
    131072: 15_300_000.0,
    262144: 207_112_184.0,
    524288: 1_062_356_830.0,
    1048576: 3_580_165_449.0,
}


def rope_theta(config) -> float:
    """The RoPE base of an HF config (transformers 5 keeps it in rope_parameters; 4.x at top level)."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"{type(config).__name__} has no rope_theta")
    return float(theta)


def extend_context(model, max_position_embeddings: int, theta: float | None = None) -> float:
    """Set the LLM's context length and RoPE base in place; returns the base used.

    ``theta`` defaults to LongVILA's value for ``max_position_embeddings``. Also records ``model_max_length`` and
    ``tokenizer_model_max_length`` in the LLM config, as LongVILA's stage-4 checkpoints do.
    """
    if theta is None:
        if max_position_embeddings not in LONGVILA_ROPE_THETA:
            raise ValueError(
                f"no LongVILA rope_theta for context {max_position_embeddings}; pass theta "
                f"(known: {sorted(LONGVILA_ROPE_THETA)})"
            )
        theta = LONGVILA_ROPE_THETA[max_position_embeddings]
    if theta <= 0 or max_position_embeddings <= 0:
        raise ValueError(f"bad context extension: theta={theta}, max_position_embeddings={max_position_embeddings}")
    llm = model.llm
    cfg = llm.config
    params = dict(getattr(cfg, "rope_parameters", None) or {"rope_type": "default"})
    params["rope_theta"] = float(theta)
    cfg.rope_parameters = params
    cfg.max_position_embeddings = max_position_embeddings
    cfg.model_max_length = max_position_embeddings
    cfg.tokenizer_model_max_length = max_position_embeddings
    decoder = llm.get_decoder()
    old = decoder.rotary_emb
    decoder.rotary_emb = type(old)(config=cfg).to(old.inv_freq.device)
    return float(theta)
