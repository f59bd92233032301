"""Stage 5, long-video SFT: everything trains on videos with many frames (sequence parallelism makes it fit)."""

from dataclasses import replace

from longvila.stages.common import main
from longvila.stages.s3_sft import SPEC as SFT_SPEC

SPEC = replace(SFT_SPEC, name="s5_long_video_sft", summary="long-video supervised fine-tuning")
"""Stage 3's trainability and data kind; what makes it stage 5 is its recipe (thousands of frames, SP)."""

if __name__ == "__main__":
    main(SPEC)
