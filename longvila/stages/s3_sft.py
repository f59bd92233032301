"""Stage 3, SFT: everything trains on instruction data (image and video conversations)."""

from longvila.stages.common import StageSpec, main

SPEC = StageSpec(
    name="s3_sft",
    trains=frozenset({"vision_tower", "mm_projector", "llm"}),
    data_kind="conversation",
    summary="full supervised fine-tuning",
)

if __name__ == "__main__":
    main(SPEC)
