"""The exact launch line for a plan: ``torchrun ... -m longvila.stages.<stage>`` with the chosen layout and flags.

Flags are the stage's own (``longvila/config.py``); only values that differ from the stage defaults are written,
except the layout, precision and checkpointing, which are always spelled out. Multi-node launches read the node's
rank and the rendezvous host from ``$NODE_RANK`` and ``$MASTER_ADDR``, as torchrun users set them. A named shape
has no folder, so ``--init_from`` is ``$INIT_FROM`` (the user's VILA-layout checkpoint).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from longvila.model.folders import folder_kind
from longvila.model.rope import LONGVILA_ROPE_THETA
from longvila.plan.layout import Layout
from longvila.plan.workload import DEFAULT_VISION_CHUNK_FRAMES, TrainingChoices, Workload

DEFAULT_TILED_MLP_TOKENS = 4096


def stage4_rope_theta(tokens: int) -> float | None:
    """LongVILA's RoPE base for the shortest of its context lengths that holds ``tokens``; None beyond 1M."""
    lengths = [length for length in sorted(LONGVILA_ROPE_THETA) if length >= tokens]
    return LONGVILA_ROPE_THETA[lengths[0]] if lengths else None


def launch_command(request, layout: Layout, choices: TrainingChoices, workload: Workload,
                   trained_context: int = 0) -> str:
    """The launch line; stage 4 gets LongVILA's RoPE base when the sample is longer than ``trained_context``.

    LongVILA's own MM-SP (``gather``) is planned only to compare against: longvila always routes frame features, so
    such a plan gets a comment instead of a line that would train something else."""
    if workload.frames and choices.mmsp != "route":
        return (f"# --mmsp_impl {choices.mmsp} plans LongVILA's own MM-SP for comparison; longvila always routes "
                "frame features (plan without it for a launch line)")
    launcher = ["torchrun", "--nnodes", str(layout.nodes), "--nproc_per_node",
                str(min(layout.gpus, layout.gpus_per_node))]
    if layout.nodes > 1:
        launcher += ["--node_rank", "$NODE_RANK", "--master_addr", "$MASTER_ADDR", "--master_port", "29500"]
    model = request.model
    init = shlex.quote(model) if Path(model).is_dir() and folder_kind(model)[0] == "vila" else "$INIT_FROM"
    flags = ["-m", f"longvila.stages.{choices.stage}", "--init_from", init, "--output_dir", f"runs/{choices.stage}",
             "--model_max_length", str(workload.tokens)]
    if workload.frames:
        flags += ["--num_video_frames", str(workload.frames)]
        if choices.vision_chunk_frames != DEFAULT_VISION_CHUNK_FRAMES:
            flags += ["--vision_chunk_frames", str(choices.vision_chunk_frames)]
    flags += ["--seq_parallel_size", str(layout.sp), "--seq_parallel_ring_size", str(layout.ring),
              "--deepspeed", choices.deepspeed, "--gradient_checkpointing", choices.checkpointing,
              "--bf16", "true" if choices.bf16 else "false"]
    if choices.lora:
        flags += ["--lora_llm", "true"]
    if choices.tiled_mlp_tokens != DEFAULT_TILED_MLP_TOKENS:
        flags += ["--tiled_mlp_tokens", str(choices.tiled_mlp_tokens)]
    if choices.loss_impl != "chunked":
        flags += ["--loss_impl", choices.loss_impl]
    if choices.stage == "s4_context_ext" and workload.tokens > trained_context:
        theta = stage4_rope_theta(workload.tokens)
        if theta is not None:
            flags += ["--rope_theta", f"{theta:.0f}"]
    return " ".join(launcher + flags)
