"""Stage 4, context extension: the LLM alone continues pretraining on long text with a larger RoPE base.

LongVILA raises ``rope_theta`` and trains on packed long documents at the target length; optional LoRA keeps it
cheap. The new ``rope_theta`` / ``max_position_embeddings`` / ``model_max_length`` go into ``llm/config.json`` so
stage 5 and inference see the extended context.
"""

from __future__ import annotations

from longvila.config import StageArguments
from longvila.model.rope import extend_context
from longvila.stages.common import StageSpec, main


def apply_context_extension(model, tokenizer, args: StageArguments) -> None:
    """Rebuild the LLM's RoPE with the new base and record the new context length (LLM config + tokenizer)."""
    length = args.data.model_max_length
    current = model.llm.config.max_position_embeddings
    extend_context(model, max(current, length), theta=args.model.rope_theta)
    tokenizer.model_max_length = length


def context_config_updates(args: StageArguments) -> dict:
    return {"model_max_length": args.data.model_max_length, "tokenizer_model_max_length": args.data.model_max_length}


SPEC = StageSpec(
    name="s4_context_ext",
    trains=frozenset({"llm"}),
    data_kind="long_text",
    summary="LLM-only context extension on packed long text",
    prepare_model=apply_context_extension,
    config_updates=context_config_updates,
)

if __name__ == "__main__":
    main(SPEC)
