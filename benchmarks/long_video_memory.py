"""Per-rank memory, speed and data loading of a stage-5 step at real layer shapes, at doubling frame counts.

    python benchmarks/long_video_memory.py --output_dir runs/long_video_memory                  # SP 1 and 2
    python benchmarks/long_video_memory.py --output_dir runs/long_video_memory --sp 4 --ring 2  # 2D: ring 2 x Ulysses 2
    python benchmarks/long_video_memory.py --output_dir runs/long_video_memory --sp 1 --lora_vision --systems new

The model is a VILA-layout checkpoint with real layer shapes and few layers (``longvila.model.real_shapes``): a
SigLIP-so400m-shaped tower (384 px, 14 px patches, 1152 hidden, 4304 MLP, 16 heads; ``--vision_layers``, default 2,
of which VILA's ``mm_vision_select_layer`` -2 runs 1),
Qwen2-0.5B's LLM shapes with the real 151,936-token vocabulary (``--llm_layers``, default 1) and ``mlp_downsample``
(196 tokens per frame). The data are real H.264 mp4 clips at 384 px written with PyAV, one video question per sample.

Systems (the stage's own flags; each comparison changes one thing):
- ``new``: ``--dataloader_num_workers 0``, otherwise the defaults: each rank decodes only its frames (inline, so
  its decode time is not inflated by sharing the cores with the step), the tower recomputes 2-frame chunks, features
  go by all-to-all-v to the rank holding their positions;
- ``tower_layer_checkpoints``: ``new`` with ``--vision_chunk_frames 0``: the tower keeps per-layer checkpoints of
  all the rank's frames instead of recomputing 2-frame chunks. ``new`` against it is the tower comparison;
- ``new_ahead``: the defaults, with 2 loader threads decoding ahead. ``new`` against ``new_ahead`` is the
  data-loading comparison (``data_seconds``), and shows what loading ahead costs in host memory (on a CPU the
  prefetched pixels and the decoders' buffers are in the same resident set as the step).

The old path (every rank decodes every frame on the training thread, the tower keeps per-layer checkpoints of all
its frames, every frame's features are all-gathered and every rank builds the whole embedded sequence) was the
``old`` system, ``--mmsp_impl gather --vision_chunk_frames 0 --dataloader_num_workers 0``, measured in the same runs
as ``new`` at commit 61def37 (``benchmarks/RESULTS.md``); the flag was removed once those numbers were in.

At these few layers the LLM's own activations grow with tokens until ``--tiled_mlp_tokens`` (4096 per rank) caps the
MLP's transient; that growth is the same in every system, so compare growth past that point (or read the planner's
term-by-term breakdown).

Each (SP, frames, system) point is a fresh run of ``--steps`` fp32 optimizer steps with gradient checkpointing; the
point reports the last step: per-rank step peak (resident-set peak of that step alone, the max over ranks),
tokens/s, ``data_seconds`` (the step's wait for data), ``decode_seconds`` and decode time per decoded frame (each
rank decodes its share), and beside it the time to decode and preprocess the whole clip once (what every rank did
before). Growth is GB per 100 frames between frame counts. Systems alternate inside each frame count (new,
new_ahead, new, ... with ``--repeats 2``), so a drift of the shared host hits both. ``--lora_vision`` trains the
tower as LoRA adapters on frozen weights (the stage's ``--lora_vision``). Writes
``long_video_memory_sp<N>[_ring<R>][_lora-vision].json`` (every row with its command line and commit) and a ``.png``
of step peak against frames.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rank_runs import launcher, provenance, run_ranks, save_line_plot

SYSTEMS = {
    "new": ["--dataloader_num_workers", "0"],
    "tower_layer_checkpoints": ["--dataloader_num_workers", "0", "--vision_chunk_frames", "0"],
    "new_ahead": [],
}
TOKENS_PER_FRAME = 196  # mlp_downsample on a 27 x 27 SigLIP grid


def write_data(folder: Path, frames: int, samples: int) -> Path:
    """``samples`` 384-px clips of ``frames`` frames each (PyAV, H.264) and their LLaVA JSON."""
    from longvila.data.synthetic import make_video_data

    return Path(make_video_data(folder, samples, frames, size=384, seed=frames))


def whole_clip_decode_seconds(data: Path, frames: int, image_processor) -> float:
    """What every rank paid before: decode and preprocess one whole clip (median of 3)."""
    from longvila.data.image import pixel_values
    from longvila.data.video import load_video

    clip = next(p for p in sorted(data.parent.rglob("*.mp4")))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        pixel_values(image_processor, list(load_video(clip, frames)))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_point(checkpoint: Path, data: Path, out: Path, system: str, frames: int, sp: int, ring: int,
              steps: int, timeout: float, extra: tuple[str, ...] = ()) -> dict | None:
    length = frames * (TOKENS_PER_FRAME + 1) + 256
    command = [*launcher(sp), "-m", "longvila.stages.s5_long_video_sft", "--init_from", str(checkpoint),
               "--output_dir", str(out), "--data_path", str(data), "--num_video_frames", str(frames),
               "--model_max_length", str(length), "--max_steps", str(steps), "--gradient_checkpointing", "true",
               "--bf16", "false", "--disable_tqdm", "true", "--per_device_train_batch_size", "1",
               *(["--seq_parallel_size", str(sp), "--seq_parallel_ring_size", str(ring)] if sp > 1 else []),
               *SYSTEMS[system], *extra]
    started = time.perf_counter()
    if not run_ranks(command, sp, timeout):
        return None
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    for weights in out.rglob("*.safetensors"):  # the trained model is not the point; keep the disk free
        weights.unlink()
    from longvila.model.vlm import DEFAULT_VISION_CHUNK_FRAMES

    decoded_per_rank = -(-frames // sp)
    flags = SYSTEMS[system]
    chunk = int(flags[flags.index("--vision_chunk_frames") + 1]) if "--vision_chunk_frames" in flags else None
    return {"system": system, "sp": sp, "ring": ring, "frames": frames, "tokens": last["num_positions"],
            "vision_chunk_frames": DEFAULT_VISION_CHUNK_FRAMES if chunk is None else chunk,
            "step_peak_gb": last["step_peak_memory_gb"], "peak_gb": last["max_memory_gb"],
            "tokens_per_sec": last["tokens_per_sec"], "step_seconds": last["step_seconds"],
            "data_seconds": last["data_seconds"], "decode_seconds": last["decode_seconds"],
            "decode_ms_per_frame": 1000 * last["decode_seconds"] / decoded_per_rank, "loss": last["loss"],
            "wall_s": time.perf_counter() - started}


def summarise(rows: list[dict]) -> list[dict]:
    """Median over repeats per (system, frames), with the range, and growth per 100 frames."""
    out = []
    for system in SYSTEMS:
        previous = None
        for frames in sorted({r["frames"] for r in rows if r["system"] == system}):
            runs = [r for r in rows if r["system"] == system and r["frames"] == frames]
            point = {"system": system, "frames": frames, "runs": len(runs), "tokens": runs[0]["tokens"],
                     "sp": runs[0]["sp"], "ring": runs[0]["ring"]}
            for key in ("step_peak_gb", "tokens_per_sec", "step_seconds", "data_seconds", "decode_seconds",
                        "decode_ms_per_frame", "whole_clip_decode_seconds"):
                values = [r[key] for r in runs if key in r]
                if values:
                    point[key] = statistics.median(values)
                    point[f"{key}_range"] = [min(values), max(values)]
            point["data_fraction"] = point["data_seconds"] / point["step_seconds"]
            if previous is not None:
                point["gb_per_100_frames"] = ((point["step_peak_gb"] - previous["step_peak_gb"])
                                              / (frames - previous["frames"]) * 100)
            out.append(point)
            previous = point
    return out


def plot(summary: list[dict], path: Path, title: str) -> None:
    labels = {"old": "old (61def37): gather + per-layer tower checkpoints",
              "new": "new: routed features + chunked tower", "new_ahead": "new, loading ahead in 2 threads",
              "tower_layer_checkpoints": "new, tower with per-layer checkpoints"}
    series = {label: [(p["frames"], p["step_peak_gb"]) for p in summary if p["system"] == system]
              for system, label in labels.items()}
    save_line_plot(series, path, "video frames per sample", "step peak per rank (GB)", title)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--sp", type=int, default=2)
    parser.add_argument("--ring", type=int, default=1, help="ring degree (Ulysses = sp / ring)")
    parser.add_argument("--frames", default="16,32,64", help="comma list of frame counts")
    parser.add_argument("--llm", default="qwen2-0.5b")
    parser.add_argument("--llm_layers", type=int, default=1)
    parser.add_argument("--vision_layers", type=int, default=2, help="SigLIP layers in the checkpoint; VILA reads "
                        "hidden state -2, so the tower runs one fewer (the 2026-12-05 rows used 1: patch embedding "
                        "only)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run; the last one is reported")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (system, frames), systems interleaved")
    parser.add_argument("--max_seconds", type=float, default=1800.0, help="per run")
    parser.add_argument("--systems", default="new,new_ahead", help=f"comma list of {', '.join(SYSTEMS)}")
    parser.add_argument("--lora_vision", action="store_true", help="LoRA adapters on a frozen tower")
    args = parser.parse_args(argv)
    args.systems = args.systems.split(",")
    if not args.systems or set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    if args.sp < 1 or args.sp % args.ring:
        parser.error(f"--sp {args.sp} must be a positive multiple of --ring {args.ring}")
    return args


def main() -> None:
    args = parse_args()
    from transformers import SiglipImageProcessor

    from longvila.model.real_shapes import build_real_shape_checkpoint

    args.output_dir.mkdir(parents=True, exist_ok=True)
    probe = f"{args.llm}-{args.llm_layers}L-siglip-{args.vision_layers}L"
    checkpoint = args.output_dir / probe
    if not (checkpoint / "config.json").is_file():
        build_real_shape_checkpoint(checkpoint, llm=args.llm, llm_layers=args.llm_layers,
                                    vision_layers=args.vision_layers, dtype=__import__("torch").float32)
    processor = SiglipImageProcessor(size={"height": 384, "width": 384})
    layout = "".join([f"sp{args.sp}", f"_ring{args.ring}" if args.ring > 1 else "",
                      "_lora-vision" if args.lora_vision else ""])
    extra = ("--lora_vision", "true") if args.lora_vision else ()
    results = args.output_dir / f"long_video_memory_{layout}.json"
    rows = []
    for frames in (int(f) for f in args.frames.split(",")):
        data = write_data(args.output_dir / "data" / f"clips-{frames}", frames, samples=4)
        whole = whole_clip_decode_seconds(data, frames, processor)
        for repeat in range(args.repeats):
            for system in args.systems:
                out = args.output_dir / "runs" / f"{layout}-{system}-{frames}-{repeat}"
                row = run_point(checkpoint, data, out, system, frames, args.sp, args.ring, args.steps,
                                args.max_seconds, extra)
                if row is None:
                    print(f"{system}: {frames} frames failed or timed out", flush=True)
                    continue
                row.update(probe=probe, repeat=repeat, whole_clip_decode_seconds=whole, lora_vision=args.lora_vision,
                           **provenance())
                rows.append(row)
                print(json.dumps(row), flush=True)
                results.write_text(json.dumps({"rows": rows, "summary": summarise(rows)}, indent=2) + "\n")
    summary = summarise(rows)
    results.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    ranks = "one process" if args.sp == 1 else f"SP {args.sp} (ring {args.ring} x Ulysses {args.sp // args.ring})"
    plot(summary, results.with_suffix(".png"),
         f"Stage 5, {args.llm} {args.llm_layers}L + SigLIP-so400m {args.vision_layers}L shapes, fp32 CPU, {ranks}")


if __name__ == "__main__":
    main()
