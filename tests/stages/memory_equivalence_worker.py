"""Run under ``torchrun --nproc_per_node 2``: stage 4 with the plain path and each memory feature, per layout.

Usage: worker.py OUT_ROOT LONG_TEXT_DATA STEPS. Writes OUT_ROOT/<layout>/<variant>/metrics.jsonl.
"""

import sys
from pathlib import Path

from longvila.cli import stage_spec
from longvila.stages.common import run_stage

LAYOUTS = {
    "dp2": [],
    "ulysses2": ["--seq_parallel_size", "2"],
    "zigzag2": ["--seq_parallel_size", "2", "--seq_parallel_ring_size", "2"],
}
VARIANTS = {
    "plain": ["--loss_impl", "naive"],
    "chunked": ["--loss_impl", "chunked"],
}
"""Each variant against ``plain``; all with gradient checkpointing on."""


def flags(data, out, steps):
    return ["--output_dir", str(out), "--data_path", data, "--max_steps", steps, "--disable_tqdm", "true",
            "--per_device_train_batch_size", "1", "--learning_rate", "1e-3", "--model_max_length", "300",
            "--gradient_checkpointing", "true"]


def main():
    root, data, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    for layout, layout_flags in LAYOUTS.items():
        for variant, variant_flags in VARIANTS.items():
            run_stage(stage_spec("s4_context_ext"), flags(data, root / layout / variant, steps) + layout_flags +
                      variant_flags)


if __name__ == "__main__":
    main()
