"""Run under ``torchrun --nproc_per_node 2``: stage 4 with the plain path and each memory feature, per layout.

Usage: worker.py OUT_ROOT LONG_TEXT_DATA STEPS. Writes OUT_ROOT/<layout>/<variant>/metrics.jsonl.
"""

import sys
from pathlib import Path

from longvila.stages import stage_spec
from longvila.stages.common import run_stage

LAYOUTS = {
    "dp2": [],
    "ulysses2": ["--seq_parallel_size", "2"],
    "zigzag2": ["--seq_parallel_size", "2", "--seq_parallel_ring_size", "2"],
}
PLAIN = ["--loss_impl", "naive", "--tiled_mlp_tokens", "0"]
MEMORY = ["--loss_impl", "chunked", "--tiled_mlp_tokens", "64"]
VARIANTS = {  # name: (reference variant, flags)
    "plain": (None, PLAIN),
    "chunked": ("plain", ["--loss_impl", "chunked", "--tiled_mlp_tokens", "0"]),
    "tiled_mlp": ("plain", ["--loss_impl", "naive", "--tiled_mlp_tokens", "64"]),
    "chunked_tiled": ("plain", MEMORY),
    "all_offload": ("plain", MEMORY + ["--gradient_checkpointing", "offload"]),
}
EXTRA_VARIANTS = {  # run on the Ulysses layout only: LoRA and ZeRO-3 with every memory feature
    "plain_lora": (None, PLAIN + ["--lora_llm", "true"]),
    "chunked_tiled_lora": ("plain_lora", MEMORY + ["--lora_llm", "true"]),
    "plain_zero3": (None, PLAIN + ["--deepspeed", "zero3"]),
    "chunked_tiled_zero3": ("plain_zero3", MEMORY + ["--deepspeed", "zero3"]),
}
"""All with gradient checkpointing on."""


def runs():
    for layout in LAYOUTS:
        for variant in VARIANTS:
            yield layout, variant, VARIANTS[variant]
    for variant in EXTRA_VARIANTS:
        yield "ulysses2", variant, EXTRA_VARIANTS[variant]


def flags(data, out, steps):
    return ["--output_dir", str(out), "--data_path", data, "--max_steps", steps, "--disable_tqdm", "true",
            "--per_device_train_batch_size", "1", "--learning_rate", "1e-3", "--model_max_length", "300",
            "--gradient_checkpointing", "true"]  # a variant's own --gradient_checkpointing comes later and wins


def main():
    root, data, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    for layout, variant, (_, variant_flags) in runs():
        run_stage(stage_spec("s4_context_ext"), flags(data, root / layout / variant, steps) + LAYOUTS[layout] +
                  variant_flags)


if __name__ == "__main__":
    main()
