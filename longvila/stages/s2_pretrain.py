"""Stage 2, pretrain: projector + LLM on interleaved/caption data (VILA shows unfreezing the LLM here matters)."""

from longvila.stages.common import StageSpec, main

SPEC = StageSpec(
    name="s2_pretrain",
    trains=frozenset({"mm_projector", "llm"}),
    data_kind="conversation",
    summary="projector + LLM pretraining",
)

if __name__ == "__main__":
    main(SPEC)
