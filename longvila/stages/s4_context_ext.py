"""Stage 4, context extension: the LLM alone continues pretraining on long text with a larger RoPE base.

LongVILA raises ``rope_theta`` and trains on packed long documents at the target length; optional LoRA keeps it
cheap. The new ``rope_theta`` / ``max_position_embeddings`` / ``model_max_length`` go into ``llm/config.json`` so
stage 5 and inference see the extended context.
"""

from __future__ import annotations

from longvila.config import StageArguments
from longvila.stages.common import StageSpec, main


def extend_context(model, tokenizer, args: StageArguments) -> None:
    """Apply the new RoPE base and context length to the LLM config and rebuild its rotary embedding."""
    config = model.llm.config
    max_length = args.data.model_max_length
    if args.model.rope_theta is not None:
        config.rope_parameters = {**(config.rope_parameters or {}), "rope_theta": float(args.model.rope_theta)}
        backbone = model.llm.get_decoder()
        rotary = backbone.rotary_emb
        backbone.rotary_emb = type(rotary)(config=config, device=rotary.inv_freq.device)
    config.max_position_embeddings = max(config.max_position_embeddings, max_length)
    tokenizer.model_max_length = max_length


def context_config_updates(args: StageArguments) -> dict:
    return {"model_max_length": args.data.model_max_length, "tokenizer_model_max_length": args.data.model_max_length}


SPEC = StageSpec(
    name="s4_context_ext",
    trains=frozenset({"llm"}),
    data_kind="long_text",
    summary="LLM-only context extension on packed long text",
    prepare_model=extend_context,
    config_updates=context_config_updates,
)

if __name__ == "__main__":
    main(SPEC)
