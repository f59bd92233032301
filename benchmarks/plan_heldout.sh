#!/usr/bin/env bash
# The planner's held-out memory measurements (longvila/plan/heldout.py): fp32 CPU two-step probes at configurations
# no constant of the memory model was fitted on, one run at a time, each under about 9 GB over all its ranks.
#
#     bash benchmarks/plan_heldout.sh runs/plan_heldout
#
# Each benchmark run writes its rows (with their command line and commit) under the output folder; they are
# copied to benchmarks/results/cpu-2026-12-05-plan-heldout-*.json, where benchmarks/plan_accuracy.py and
# tests/plan/test_accuracy.py compare them with the planner as held-out points.
set -euo pipefail
out=${1:?usage: plan_heldout.sh OUTPUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
results="$here/results"
prefix=cpu-2026-12-05-plan-heldout
lcm() { python "$here/long_context_memory.py" --output_dir "$out/lcm" --systems default "$@"; }

# A zigzag ring over 2 ranks (Qwen2-0.5B shapes, 2 layers): the ring's buffers, ZeRO-2 partitions over 2 ranks.
lcm --llm qwen2-0.5b --llm_layers 2 --sp 2 --ring 2 --start 4096 --max_length 4096
cp "$out/lcm/long_context_memory_sp2_ring2_qwen2-0.5b-2L.json" "$results/$prefix-sp2-ring2-qwen2-0.5b-2L.json"

# A Llama-style shape with the 128,256-token vocabulary (Llama-3.2-1B, 2 of its 16 layers), LoRA on the LLM.
lcm --llm llama3.2-1b --llm_layers 2 --lora --start 2048 --max_length 2048
cp "$out/lcm/long_context_memory_llama3.2-1b-2L_lora.json" "$results/$prefix-llama3.2-1b-2L-lora.json"

# ZeRO-3 (weights partitioned too) under Ulysses SP 2.
lcm --llm qwen2-0.5b --llm_layers 2 --sp 2 --deepspeed zero3 --start 4096 --max_length 4096
cp "$out/lcm/long_context_memory_sp2_qwen2-0.5b-2L_zero3.json" "$results/$prefix-sp2-qwen2-0.5b-2L-zero3.json"

# Stage 5 with LoRA on the tower (frozen SigLIP weights; one running layer), chunked and per-layer checkpoints.
python "$here/long_video_memory.py" --output_dir "$out/lvm" --sp 1 --frames 16,32 --steps 2 --vision_layers 2 \
    --lora_vision --systems new,tower_layer_checkpoints
cp "$out/lvm/long_video_memory_sp1_lora-vision.json" "$results/$prefix-video-sp1-lora-vision.json"

# More layers of a shape a constant was fitted on (Qwen2-0.5B, 6 layers instead of 1).
lcm --llm qwen2-0.5b --llm_layers 6 --start 4096 --max_length 4096
cp "$out/lcm/long_context_memory_qwen2-0.5b-6L.json" "$results/$prefix-qwen2-0.5b-6L.json"
