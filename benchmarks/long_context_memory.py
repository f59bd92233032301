"""Peak memory and speed of a stage-4 step at real model shapes, at doubling lengths: the old path vs the default.

    python benchmarks/long_context_memory.py --output_dir runs/long_context_memory

Builds (once) a VILA-layout checkpoint with Qwen2-1.5B's layer shapes and its 151,936-token vocabulary but only 2
decoder layers (``longvila.model.real_shapes``), then runs two stage-4 steps per (system, length) in a fresh process (two, because AdamW allocates its state in
the first step: only the second step's peak holds weights, gradients, optimizer state and activations at once),
fp32 on CPU with gradient checkpointing, lengths 2K, 4K, 8K, ... until a run exceeds ``--budget_gb`` (predicted
from the previous two lengths, so the machine is never driven out of memory) or ``--max_seconds``. Each point is
``max_memory_gb`` (resident-set peak over both steps) and the second step's tokens/s from ``metrics.jsonl``; growth is GB per 1K tokens
between consecutive lengths. Systems: ``naive`` (full-logits loss, untiled MLP: the old default), ``chunked``
(chunked loss only) and ``default`` (chunked loss + tiled MLP). Writes ``<out>/long_context_memory.json`` and a plot ``<out>/long_context_memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SYSTEMS = {
    "naive": ["--loss_impl", "naive", "--tiled_mlp_tokens", "0"],  # the path every stage took before
    "chunked": ["--loss_impl", "chunked", "--tiled_mlp_tokens", "0"],
    "default": [],  # chunked loss + tiled MLP (4096-token tiles)
}


def run_point(checkpoint: Path, out: Path, system: str, length: int, timeout: float) -> dict | None:
    command = [sys.executable, "-m", "longvila.stages.s4_context_ext", "--init_from", str(checkpoint),
               "--output_dir", str(out), "--data_dir", str(out.parent.parent / "data"), "--max_steps", "2",
               "--model_max_length", str(length), "--gradient_checkpointing", "true", "--rope_theta", "1000000",
               "--disable_tqdm", "true", "--bf16", "false", *SYSTEMS[system]]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return None
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"system": system, "tokens": length, "peak_gb": record["max_memory_gb"],
            "step_tokens_per_sec": record["tokens_per_sec"], "wall_s": time.perf_counter() - started}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for system in SYSTEMS:
        points = [(r["tokens"], r["peak_gb"]) for r in rows if r["system"] == system]
        if points:
            ax.plot(*zip(*points), marker="o", label=system)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens per step")
    ax.set_ylabel("peak resident memory (GB)")
    ax.set_title("Stage 4, Qwen2-1.5B shapes (2 layers, 152K vocab), fp32 CPU")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--start", type=int, default=2048)
    parser.add_argument("--max_length", type=int, default=32768)
    parser.add_argument("--budget_gb", type=float, default=20.0)
    parser.add_argument("--max_seconds", type=float, default=1800.0, help="per run")
    args = parser.parse_args()

    from longvila.model.real_shapes import build_real_shape_checkpoint

    args.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.output_dir / "qwen2-1.5b-2L"
    if not (checkpoint / "config.json").is_file():
        build_real_shape_checkpoint(checkpoint)
    rows: list[dict] = []
    for loss in args.systems.split(","):
        length, done = args.start, []
        while length <= args.max_length:
            if len(done) >= 2:
                (l1, m1), (l2, m2) = done[-2:]
                predicted = m2 + (m2 - m1) / (l2 - l1) * (length - l2)
                if predicted > args.budget_gb:
                    print(f"{loss}: {length} tokens predicted at {predicted:.1f} GB > budget; stopping")
                    break
            row = run_point(checkpoint, args.output_dir / "runs" / f"{loss}-{length}", loss, length,
                            args.max_seconds)
            if row is None:
                print(f"{loss}: {length} tokens failed or timed out; stopping")
                break
            if done:
                row["gb_per_1k_tokens"] = (row["peak_gb"] - done[-1][1]) / ((length - done[-1][0]) / 1000)
            done.append((length, row["peak_gb"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
            length *= 2
    (args.output_dir / "long_context_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.output_dir / "long_context_memory.png")


if __name__ == "__main__":
    main()
