"""Stage 1, align: train the projector only, on image captions, so visual tokens land in the LLM's space."""

from longvila.stages.common import StageSpec, main

SPEC = StageSpec(
    name="s1_align",
    trains=frozenset({"mm_projector"}),
    data_kind="conversation",
    summary="projector only, image-caption alignment",
)

if __name__ == "__main__":
    main(SPEC)
