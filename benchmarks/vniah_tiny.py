"""Does the pipeline teach the embedded default the needle task? V-NIAH before and after `longvila pipeline`.

    python benchmarks/vniah_tiny.py --output_dir runs/vniah_tiny

Steps (each one a plain console command, printed and timed, so any of them can be rerun by hand):

1. ``longvila vniah`` on the untrained embedded default (chance level) -> ``<out>/untrained/``;
2. ``longvila pipeline`` (stages 1-5 with the recipes in ``longvila/recipes/``) -> ``<out>/pipeline/``;
3. ``longvila vniah`` on the stage-5 output -> ``<out>/trained/``;
4. ``longvila passkey`` on the stage-4 output -> ``<out>/passkey_s4/`` (the context-extension check).

Each evaluation writes ``*_results.json`` and ``*_heatmap.png``; ``<out>/summary.json`` collects accuracies, the
grid and the wall-clock time of every step. The default V-NIAH grid runs 16..512 haystack frames (stage 5 trains on
clips of at most 32 frames, so the grid reaches 16x that) x depth 0..100% in steps of 10, with the six synthetic
needles. ``--pipeline DIR`` reuses a finished pipeline run instead of training again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

TRAINED_STAGE, PASSKEY_STAGE = "s5_long_video_sft", "s4_context_ext"


def run(command: list[str], log: Path) -> float:
    """Run a console command (output to ``log``), fail loudly, return its wall-clock seconds."""
    from longvila.engine.dist import child_environment

    print(f"+ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=child_environment())
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"command failed ({result.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    print(f"  {seconds:.1f} s", flush=True)
    return seconds


def longvila(*args: str) -> list[str]:
    return [sys.executable, "-m", "longvila.cli", *args]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("runs/vniah_tiny"))
    parser.add_argument("--pipeline", type=Path, default=None, help="reuse this finished `longvila pipeline` run")
    parser.add_argument("--min_frames", type=int, default=16)
    parser.add_argument("--max_frames", type=int, default=512)
    parser.add_argument("--frames_step", type=int, default=16)
    parser.add_argument("--depth_step", type=float, default=10.0)
    parser.add_argument("--passkey_max_length", type=int, default=4096)
    parser.add_argument("--skip_passkey", action="store_true")
    args = parser.parse_args(argv)

    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    grid = ["--min_frames", str(args.min_frames), "--max_frames", str(args.max_frames), "--frames_step",
            str(args.frames_step), "--depth_step", str(args.depth_step), "--disable_tqdm"]
    seconds: dict[str, float] = {}
    commands: dict[str, str] = {}

    def step(name: str, command: list[str]) -> None:
        commands[name] = shlex.join(command)
        seconds[name] = run(command, out / f"{name}.log")

    step("untrained", longvila("vniah", "--output_dir", str(out / "untrained"), "--title",
                               "V-NIAH, untrained embedded default", *grid))
    pipeline = args.pipeline.resolve() if args.pipeline else out / "pipeline"
    if args.pipeline is None:
        step("pipeline", longvila("pipeline", "--output_dir", str(pipeline), "--disable_tqdm", "true"))
    step("trained", longvila("vniah", "--model", str(pipeline / TRAINED_STAGE), "--output_dir",
                             str(out / "trained"), "--title", "V-NIAH, embedded default after longvila pipeline",
                             *grid))
    if not args.skip_passkey:
        step("passkey_s4", longvila("passkey", "--model", str(pipeline / PASSKEY_STAGE), "--output_dir",
                                    str(out / "passkey_s4"), "--max_length", str(args.passkey_max_length),
                                    "--length_step", "256", "--min_length", "256", "--depth_step", "10",
                                    "--title", "Passkey, embedded default after stage 4", "--disable_tqdm"))

    def accuracy(folder: str, task: str) -> float:
        return json.loads((out / folder / f"{task}_results.json").read_text())["mean_accuracy"]

    from longvila.data.synthetic import STAGE_DEFAULTS

    training_frames = STAGE_DEFAULTS[TRAINED_STAGE][1]["num_frames"]  # the longest stage-5 synthetic clip
    stage_seconds = {}
    metrics = pipeline / TRAINED_STAGE / "metrics.jsonl"
    if metrics.is_file():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        stage_seconds["s5_steps"] = len(lines)
        stage_seconds["s5_final_loss"] = lines[-1]["loss"] if lines else None
    summary = {
        "untrained_vniah_accuracy": accuracy("untrained", "vniah"),
        "trained_vniah_accuracy": accuracy("trained", "vniah"),
        "passkey_s4_accuracy": None if args.skip_passkey else accuracy("passkey_s4", "passkey"),
        "grid": {"frames": [args.min_frames, args.max_frames, args.frames_step], "depth_step": args.depth_step,
                 "training_max_frames": training_frames,
                 "grid_reach": args.max_frames / training_frames},
        "seconds": seconds,
        "train_plus_eval_seconds": seconds.get("pipeline", 0.0) + seconds["trained"],
        "commands": commands,
        "pipeline": str(pipeline),
        **stage_seconds,
        "cpu_count": os.cpu_count(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "commands"}, indent=1))


if __name__ == "__main__":
    main()
