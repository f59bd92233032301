"""Run under ``torchrun --nproc_per_node 4``: train stage 4 and stage 5 under every sequence-parallel layout.

One launch runs all layouts in turn (each a full stage run with its own mesh and DeepSpeed engine), so the test
pays the 4-process start-up once. Usage: worker.py OUT_ROOT LONG_TEXT_DATA VIDEO_DATA STEPS
"""

import sys
from pathlib import Path

from longvila.stages import stage_spec
from longvila.stages.common import run_stage

LAYOUTS = {
    "ulysses4": ["--seq_parallel_size", "4"],
    "zigzag4": ["--seq_parallel_size", "4", "--seq_parallel_ring_size", "4"],
    "ring4": ["--seq_parallel_size", "4", "--seq_parallel_ring_size", "4", "--seq_parallel_ring_type", "ring"],
    "2d": ["--seq_parallel_size", "4", "--seq_parallel_ring_size", "2"],
    "sp2dp2": ["--seq_parallel_size", "2", "--seq_parallel_ring_size", "2"],
}


def stage_flags(stage, data, out, steps):
    flags = ["--output_dir", str(out), "--data_path", data, "--max_steps", steps, "--disable_tqdm", "true",
             "--per_device_train_batch_size", "1", "--learning_rate", "1e-3"]
    if stage == "s4_context_ext":
        return flags + ["--model_max_length", "300"]
    return flags + ["--num_video_frames", "6", "--model_max_length", "256", "--vision_chunk_frames", "1"]


def main():
    root, long_text, video, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    for stage, data in (("s4_context_ext", long_text), ("s5_long_video_sft", video)):
        for name, layout in LAYOUTS.items():
            run_stage(stage_spec(stage), stage_flags(stage, data, root / stage / name, steps) + layout)


if __name__ == "__main__":
    main()
