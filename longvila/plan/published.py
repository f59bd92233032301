"""Published long-context training runs, as plan requests, with what the planner must say about each.

Settings are read from the runs' own scripts and configs (sources given per run). Where a run used something
longvila does not have, the closest packaged choice is left to the search (``deepspeed=None``) and the table says
so: ALST offloads the optimizer with ZeRO-3 while keeping the weights on the GPU, which no packaged config does.
A100 runs whose memory size is not stated are taken as the 80 GB part.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PublishedRun:
    name: str
    source: str
    hardware: str
    request: dict = field(default_factory=dict)
    """``PlanRequest`` fields; ``device`` is a preset name."""
    fits: bool = True
    """Whether the run as published can start and fit; False where the published layout breaks a rule."""
    flagged: str | None = None
    """A phrase the planner's reasons must contain for a layout that cannot run."""


VILA = "NVlabs/VILA b760c34 (LongVILA scripts since 36f6adc)"
PUBLISHED_RUNS = (
    PublishedRun(
        "LongVILA stage 4: Qwen2-7B to 256K tokens, LoRA, ZeRO-2, zigzag ring over all GPUs",
        f"{VILA}: longvila/train/4_extend_llm_256k.sh; README: at least two 8xA100 nodes", "16 x A100-80GB",
        dict(model="qwen2-7b", stage="s4_context_ext", model_max_length=262144, gpus=16, device="A100-80GB",
             seq_parallel_size=16, seq_parallel_ring_size=16, deepspeed="zero2", lora=True)),
    PublishedRun(
        "LongVILA stage 5: 2048 frames, SP 28 (Ulysses), ZeRO-3, full fine-tune, on 32 x 8 H100",
        f"{VILA}: longvila/train/5_long_sft_2048frames.sh; README: 32 8xH100 nodes", "256 x H100-80GB",
        dict(model="qwen2-7b", stage="s5_long_video_sft", num_video_frames=2048, gpus=256, device="H100-80GB",
             seq_parallel_size=28, seq_parallel_ring_size=1, deepspeed="zero3", lora=False),
        fits=False, flagged="world size 256 is not divisible by --seq_parallel_size 28"),
    PublishedRun(
        "LongVILA stage 5 at SP 28 on 28 x 8 H100 (a world SP 28 divides)",
        f"{VILA}: longvila/train/5_long_sft_2048frames.sh", "224 x H100-80GB",
        dict(model="qwen2-7b", stage="s5_long_video_sft", num_video_frames=2048, gpus=224, device="H100-80GB",
             seq_parallel_size=28, seq_parallel_ring_size=1, deepspeed="zero3", lora=False)),
    PublishedRun(
        "LongVILA stage 5: 512 frames at SP 14 with Qwen2-7B (28 q / 4 kv heads)",
        f"{VILA}: longvila/train/5_long_sft_512frames.sh", "224 x H100-80GB",
        dict(model="qwen2-7b", stage="s5_long_video_sft", num_video_frames=512, gpus=224, device="H100-80GB",
             seq_parallel_size=14, seq_parallel_ring_size=1, deepspeed="zero3", lora=False),
        fits=False, flagged="num kv heads 4 neither divides by nor divides the ulysses degree 14"),
    PublishedRun(
        "DeepSpeed ALST: Llama-3.1-8B, 500K tokens on one H100 (ZeRO-3, optimizer and weights offloaded, "
        "checkpoints offloaded, tiled MLP and loss)",
        "snowflakedb/ArcticTraining 5885b9f: projects/sequence-parallelism/*.yml; arXiv 2506.13996",
        "1 x H100-80GB",
        dict(model="llama3-8b", model_max_length=500_000, gpus=1, device="H100-80GB", deepspeed="zero3_offload",
             gradient_checkpointing="offload", lora=False)),
    PublishedRun(
        "DeepSpeed ALST: Llama-3.1-8B, 3.7M tokens on 8 H100, Ulysses SP 8 (ZeRO-3, optimizer offloaded, "
        "checkpoints offloaded)",
        "snowflakedb/ArcticTraining 5885b9f: projects/sequence-parallelism/*.yml (max_length 3,800,000); "
        "arXiv 2506.13996", "8 x H100-80GB",
        dict(model="llama3-8b", model_max_length=3_700_000, gpus=8, device="H100-80GB", seq_parallel_size=8,
             seq_parallel_ring_size=1, gradient_checkpointing="offload", lora=False)),
    PublishedRun(
        "EasyContext: Llama-2-7B, 700K tokens on 8 A100, zigzag ring 8 (ZeRO-3, optimizer and weights offloaded)",
        "jzhang38/EasyContext 6b0d310: README speed table, train.py, accelerate_configs/", "8 x A100-80GB",
        dict(model="llama2-7b", model_max_length=700_000, gpus=8, device="A100-80GB", seq_parallel_size=8,
             seq_parallel_ring_size=8, deepspeed="zero3_offload", lora=False)),
)


def plan_published(run: PublishedRun):
    """The planner's answer for a published run (a ``Plan``)."""
    from longvila.plan.hardware import resolve_device
    from longvila.plan.planner import PlanRequest, plan

    fields = dict(run.request)
    return plan(PlanRequest(device=resolve_device(fields.pop("device")), **fields))
