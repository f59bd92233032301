"""``longvila plan``: will this run fit, how should it be laid out, how long will a step take, how to launch it.

    longvila plan --model qwen2-7b --model_max_length 1048576 --gpus 8 --gpu_memory_gb 80
    longvila plan --model qwen2-7b --num_video_frames 2048 --gpus 256 --device H100-80GB
    longvila plan --model qwen2-7b --num_video_frames 2048 --gpus 8 --mmsp_impl gather --vision_chunk_frames 0  # LongVILA
    longvila plan --model runs/s3 --model_max_length 262144 --gpus 16 --seq_parallel_size 8 --json
    longvila plan --model DIR --model_max_length 4096 --device cpu                 # checkable on this host

Every choice not given (SP and ring degree, ZeRO stage, LoRA, activation offload) is searched. Video is planned
for the trainer's MM-SP (frame features routed to their shard, tower in chunks of ``--vision_chunk_frames``); the
third line plans LongVILA's own MM-SP (every rank gathers all features and builds the whole sequence, the tower keeps
per-layer checkpoints) for comparison, with no launch line. Exit code 0 when the plan fits, 1 when nothing fits, 2 for a bad request.
"""

from __future__ import annotations

import argparse
import json
import sys

from longvila.errors import ConfigError, reported_as
from longvila.plan.hardware import GPU_PRESETS, resolve_device
from longvila.plan.planner import PlanRequest, plan
from longvila.plan.report import format_plan, plan_json
from longvila.plan.workload import DEEPSPEED_CONFIGS, DEFAULT_VISION_CHUNK_FRAMES, MMSP_IMPLS


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvila plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="VILA-layout folder, HF LLM folder, or qwen2-1.5b | qwen2-7b | "
                       "llama3-8b")
    model.add_argument("--vision_tower", default=None, help="SigLIP folder or siglip-so400m (default) when --model "
                       "is not a VILA folder")
    model.add_argument("--num_layers", type=int, default=None, help="override the LLM's depth (few-layer probes)")
    model.add_argument("--vision_layers", type=int, default=None, help="override the vision tower's depth")
    work = parser.add_argument_group("workload")
    work.add_argument("--stage", default=None, help="stage module name; default s4_context_ext for text, "
                      "s5_long_video_sft with --num_video_frames")
    work.add_argument("--model_max_length", type=int, default=None, help="tokens per sample (text)")
    work.add_argument("--num_video_frames", type=int, default=None, help="frames per sample (video)")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--gpus", type=int, default=1)
    cluster.add_argument("--gpus_per_node", type=int, default=None, help="default 8 (CPU: all ranks on this host)")
    cluster.add_argument("--device", default="H100-80GB", help=f"{' | '.join(GPU_PRESETS)} | cpu")
    cluster.add_argument("--gpu_memory_gb", type=float, default=None, help="memory per GPU (on cpu: the host's)")
    cluster.add_argument("--host_memory_gb", type=float, default=None, help="per node, for activation offload")
    train = parser.add_argument_group("training choices (searched when not given)")
    train.add_argument("--seq_parallel_size", type=int, default=None)
    train.add_argument("--seq_parallel_ring_size", type=int, default=None)
    train.add_argument("--zero_stage", type=int, default=None, choices=(2, 3), help="only configs of this stage")
    train.add_argument("--deepspeed", default=None, choices=DEEPSPEED_CONFIGS, help="zero2_offload: Adam state in "
                       "host memory; zero3_offload: Adam state and weights in host memory")
    train.add_argument("--lora", type=_bool, default=None, help="true | false")
    train.add_argument("--gradient_checkpointing", default=None, choices=("true", "false", "offload"))
    train.add_argument("--tiled_mlp_tokens", type=int, default=4096)
    train.add_argument("--loss_impl", default="chunked", choices=("chunked", "naive"))
    train.add_argument("--bf16", type=_bool, default=None, help="default: true on GPUs, false on cpu")
    train.add_argument("--mmsp_impl", default="route", choices=MMSP_IMPLS, help="video: route (longvila: each rank's "
                       "frames' features go straight to the ranks holding their positions) | gather (LongVILA's "
                       "MM-SP, for comparison only: every rank gathers all features and builds the whole sequence)")
    train.add_argument("--vision_chunk_frames", type=int, default=DEFAULT_VISION_CHUNK_FRAMES,
                       help="video: frames per chunk of the tower's whole-tower recompute (0: one pass with "
                       "per-layer checkpoints; with --mmsp_impl gather that is LongVILA's path)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def request_from_args(args: argparse.Namespace) -> PlanRequest:
    device = resolve_device(args.device, args.gpu_memory_gb)
    stage = args.stage or ("s5_long_video_sft" if args.num_video_frames is not None else "s4_context_ext")
    from longvila.stages import stage_spec

    stage_spec(stage)
    per_node = args.gpus_per_node or (args.gpus if not device.is_cuda else 8)
    return PlanRequest(
        model=args.model, device=device, gpus=args.gpus, gpus_per_node=per_node, stage=stage,
        model_max_length=args.model_max_length, num_video_frames=args.num_video_frames,
        vision_tower=args.vision_tower, num_layers=args.num_layers, vision_layers=args.vision_layers,
        seq_parallel_size=args.seq_parallel_size, seq_parallel_ring_size=args.seq_parallel_ring_size,
        zero_stage=args.zero_stage, deepspeed=args.deepspeed, lora=args.lora, gradient_checkpointing=args.gradient_checkpointing,
        tiled_mlp_tokens=args.tiled_mlp_tokens, loss_impl=args.loss_impl, bf16=args.bf16,
        mmsp_impl=args.mmsp_impl, vision_chunk_frames=args.vision_chunk_frames, host_memory_gb=args.host_memory_gb,
    )


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with reported_as(ConfigError):
        result = plan(request_from_args(args))
    print(json.dumps(plan_json(result), indent=2) if args.json else format_plan(result))
    return 0 if result.fits else 1


def main(argv: list[str] | None = None) -> None:
    from longvila.console import run_console

    sys.exit(run_console("longvila plan", run, argv))


if __name__ == "__main__":
    main()
