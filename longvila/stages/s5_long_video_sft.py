"""Stage 5, long-video SFT: everything trains on videos with many frames (sequence parallelism makes it fit)."""

from longvila.stages.common import StageSpec, main

SPEC = StageSpec(
    name="s5_long_video_sft",
    trains=frozenset({"vision_tower", "mm_projector", "llm"}),
    data_kind="conversation",
    summary="long-video supervised fine-tuning",
)

if __name__ == "__main__":
    main(SPEC)
