"""A plan as a terminal table, or as JSON for scripts (``peak_memory_gb`` per GPU and ``command`` at the top)."""

from __future__ import annotations

from longvila.plan.planner import Candidate, Plan

MEMORY_ROWS = (
    ("weights", "weights_gib"),
    ("optimizer state (fp32 master + Adam)", "optimizer_state_gib"),
    ("gradient bucket", "gradient_bucket_gib"),
    ("LM-head gradient", "head_gradient_gib"),
    ("layer gradients (end of backward)", "layer_gradients_gib"),
    ("checkpointed activations", "checkpointed_activations_gib"),
    ("one layer's recompute + backward", "layer_transient_gib"),
    ("communication buffers", "communication_gib"),
    ("loss (LM-head grad + logit chunks)", "loss_gib"),
    ("vision tower (kept through the backward)", "vision_tower_gib"),
    ("video pixels", "video_pixels_gib"),
    ("video features' gradients", "video_features_gib"),
    ("vision tower backward (its recompute)", "vision_transient_gib"),
    ("optimizer step transient", "optimizer_step_gib"),
    ("runtime (interpreter, libraries)", "runtime_gib"),
)
TIME_ROWS = (
    ("dense matmuls", "dense_s"), ("attention", "attention_s"), ("vision tower", "vision_s"),
    ("Ulysses all-to-all", "ulysses_s"), ("ring P2P (not hidden)", "ring_exposed_s"),
    ("ZeRO collectives", "zero_s"), ("offload (host link, CPU Adam)", "offload_s"),
)
SHOWN_REJECTIONS = 12


def _describe_choices(candidate: Candidate, video: bool = False) -> str:
    c = candidate.choices
    offload = {"zero2_offload": " + optimizer offload", "zero3_offload": " + optimizer and weight offload"}
    parts = [f"ZeRO-{c.zero_stage}{offload.get(c.deepspeed, '')}", "LoRA" if c.lora else "full fine-tune",
             {"true": "checkpointing", "offload": "checkpointing + offload", "false": "no checkpointing"}[
                 c.checkpointing], "bf16" if c.bf16 else "fp32", f"{c.loss_impl} loss",
             f"MLP tiles {c.tiled_mlp_tokens}" if c.tiled_mlp_tokens else "untiled MLP"]
    if video:
        parts += [f"MM-SP {c.mmsp}", f"tower chunks of {c.vision_chunk_frames} frames" if c.vision_chunk_frames
                  else "unchunked tower (per-layer checkpoints)"]
    return ", ".join(parts)


def format_plan(result: Plan) -> str:
    request, shape, chosen = result.request, result.shape, result.best
    video = bool(result.workload.frames)
    lines = [f"model      {shape.source}: {shape.num_layers} layers, hidden {shape.hidden_size}, "
             f"{shape.num_q_heads} q / {shape.num_kv_heads} kv heads, vocab {shape.vocab_size:,}; "
             f"{shape.total_params / 1e9:.2f} B parameters",
             f"workload   {request.stage}: {result.workload.tokens:,} tokens per sample"
             + (f" ({result.workload.frames} frames)" if result.workload.frames else ""),
             f"cluster    {request.gpus} x {request.device.name} ({min(request.gpus, request.gpus_per_node)} per node), "
             f"{request.rank_budget_gib:.1f} GiB usable per {'GPU' if request.device.is_cuda else 'rank'}"]
    if not result.fits:
        lines.append("")
        if chosen is None:
            lines.append("verdict    NO LAYOUT CAN RUN: every layout breaks a rule")
        else:
            lines.append(f"verdict    DOES NOT FIT: {chosen.layout.describe()}, {_describe_choices(chosen, video)}")
            lines += [f"           - {problem}" for problem in chosen.problems]
        if result.alternative is not None:
            lines.append("instead    with the SP degree left open:")
            chosen = result.alternative
        else:
            chosen = chosen if chosen is not None and chosen.memory is not None else None
    if chosen is not None and chosen.memory is not None:
        unit = "GPU" if request.device.is_cuda else "rank"
        lines += ["", f"layout     {chosen.layout.describe()}, {_describe_choices(chosen, video)}"]
        untested = not_yet_run_on_gpu(result, chosen)
        if untested:
            lines.append(f"caution    not yet run on a GPU: {', '.join(untested)}")
        lines += _breakdown(chosen, unit)
    if result.max_tokens:
        reach = f"{result.max_tokens:,} tokens" + (f" ({result.max_frames} frames)" if result.max_frames else "")
        lines.append(f"reach      the longest sample that fits this layout: {reach}")
    lines += [f"note       {note}" for note in result.notes]
    ruled_out = _ruled_out_layouts(result)
    if ruled_out:
        lines += ["", f"ruled out  {len(ruled_out)} layout{'s' if len(ruled_out) > 1 else ''}:"]
        lines += [f"           {layout.describe()}: {reason}" for layout, reason in ruled_out[:SHOWN_REJECTIONS]]
        if len(ruled_out) > SHOWN_REJECTIONS:
            lines.append(f"           ... and {len(ruled_out) - SHOWN_REJECTIONS} more (--json lists every one)")
    command = result.command()
    if command:
        lines += ["", "command", f"  {command}"]
    return "\n".join(lines)


def not_yet_run_on_gpu(result: Plan, candidate: Candidate) -> list[str]:
    """The candidate's choices that have never run on a GPU (``longvila.plan.workload.NOT_YET_RUN_ON_GPU``), as
    flags; empty for a CPU plan, where they have."""
    return list(candidate.choices.not_yet_run_on_gpu) if result.request.device.is_cuda else []


def _ruled_out_layouts(result: Plan) -> list[tuple]:
    """Each layout none of whose choices can run, with the reason of its closest candidate (a rule it breaks, or
    the memory its leanest choices still need)."""
    runnable = {c.layout for c in result.candidates if c.fits}
    closest: dict = {}
    for candidate in result.rejected:
        if candidate.layout in runnable:
            continue
        peak = candidate.memory.peak_gib if candidate.memory else float("inf")
        if candidate.layout not in closest or peak < closest[candidate.layout][0]:
            closest[candidate.layout] = (peak, "; ".join(candidate.problems))
    return [(layout, reason) for layout, (_, reason) in closest.items()]


def _breakdown(candidate: Candidate, unit: str) -> list[str]:
    memory, time = candidate.memory.as_dict(), candidate.time.as_dict()
    lines = ["", f"memory per {unit} (GiB)"]
    lines += [f"  {label:<38}{memory[key]:>8.2f}" for label, key in MEMORY_ROWS if memory[key] > 0.005]
    vision = f", vision backward {memory['vision_backward_gib']:.2f}" if memory["vision_backward_gib"] else ""
    lines.append(f"  peak ({memory['peak_phase']}){'':<{30 - len(memory['peak_phase'])}}{memory['peak_gib']:>8.2f}"
                 f"   (backward {memory['backward_gib']:.2f}{vision}, optimizer step {memory['step_gib']:.2f})")
    if memory["host_offload_gib"] > 0:
        lines.append(f"  host memory for offloaded state         {memory['host_offload_gib']:>8.2f} per {unit}")
    lines += ["", "step time (s)"]
    lines += [f"  {label:<38}{time[key]:>8.2f}" for label, key in TIME_ROWS if time[key] > 0.0005]
    lines.append(f"  total{'':<33}{time['total_s']:>8.2f}   ({time['model_tflop']:,.0f} TFLOP per {unit} per step)")
    return lines


def plan_json(result: Plan) -> dict:
    chosen = result.best if result.fits else result.alternative
    return {
        "fits": result.fits,
        "peak_memory_gb": chosen.memory.peak_gib if chosen else None,
        "step_seconds": chosen.time.total_s if chosen else None,
        "command": result.command(),
        "layout": _candidate_json(chosen, result) if chosen else None,
        "requested": _candidate_json(result.best, result) if result.best is not None else None,
        "max_tokens": result.max_tokens,
        "max_frames": result.max_frames,
        "tokens": result.workload.tokens,
        "frames": result.workload.frames,
        "notes": result.notes,
        "device": result.request.device.name,
        "usable_memory_gb": result.request.rank_budget_gib,
        "rejected": [{"layout": c.layout.describe(), "choices": _describe_choices(c, bool(result.workload.frames)),
                      "reasons": list(c.problems)}
                     for c in result.rejected],
    }


def _candidate_json(candidate: Candidate, result: Plan) -> dict:
    return {
        "seq_parallel_size": candidate.layout.sp, "seq_parallel_ring_size": candidate.layout.ring,
        "ulysses": candidate.layout.ulysses, "dp": candidate.layout.dp, "gpus": candidate.layout.gpus,
        "deepspeed": candidate.choices.deepspeed, "zero_stage": candidate.choices.zero_stage, "lora": candidate.choices.lora,
        "gradient_checkpointing": candidate.choices.checkpointing, "bf16": candidate.choices.bf16,
        "mmsp_impl": candidate.choices.mmsp, "vision_chunk_frames": candidate.choices.vision_chunk_frames,
        "memory_gib": candidate.memory.as_dict() if candidate.memory else None,
        "step_time_s": candidate.time.as_dict() if candidate.time else None,
        "problems": list(candidate.problems),
        "not_yet_run_on_gpu": not_yet_run_on_gpu(result, candidate),
    }
