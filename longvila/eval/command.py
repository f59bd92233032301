"""What every evaluation command shares: flags, one-line errors, the run, and publishing its results."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvila.eval.grid import EvalError, GridSpec, depth_values
from longvila.eval.report import summarize, write_results
from longvila.eval.runtime import DTYPES, EvalRuntime, check_model_dir, load_runtime
from longvila.eval.scoring import SCORING_MODES, SCORING_RULES, uses_kv_cache

logger = logging.getLogger("longvila.eval")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`EvalError` (one line, exit code 2 in :func:`cli_main`)."""

    def error(self, message: str):
        raise EvalError(message)


@dataclass(kw_only=True)
class EvalConfig:
    """What every evaluation takes (the flags of :func:`common_parser`); each task's config adds its grid."""

    output_dir: Path
    model: str | None = None
    depth_step: float = 10.0
    seq_parallel_size: int = 1
    seq_parallel_ring_size: int = 1
    seq_parallel_ring_type: str = "zigzag_ring"
    attn_backend: str = "auto"
    dtype: str | None = None
    seed: int = 0
    title: str | None = None
    disable_tqdm: bool = False
    scoring: str = "teacher_forced"
    max_new_tokens: int = 16


def check_common(cfg: EvalConfig) -> list[float]:
    """The checks of the flags every evaluation takes (one-line :class:`EvalError`); returns the depth axis."""
    if cfg.scoring not in SCORING_MODES:
        raise EvalError(f"--scoring must be one of {', '.join(SCORING_MODES)}, got {cfg.scoring!r}")
    if cfg.max_new_tokens < 1:
        raise EvalError(f"--max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    depths = depth_values(cfg.depth_step)
    if cfg.model is not None:
        check_model_dir(cfg.model)
    return depths


def common_parser(prog: str, description: str) -> OneLineParser:
    """Flags every evaluation takes: model, output, depth grid, parallelism, dtype."""
    parser = OneLineParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--model", default=None,
                        help="VILA-layout checkpoint folder (any stage's output). Default: the embedded tiny model.")
    parser.add_argument("--output_dir", required=True, type=Path, help="Where the JSON and the heatmap go.")
    parser.add_argument("--depth_step", type=float, default=10.0, help="Depth grid step in percent (0..100).")
    parser.add_argument("--seq_parallel_size", type=int, default=1, help="SP degree (launch with torchrun).")
    parser.add_argument("--seq_parallel_ring_size", type=int, default=1, help="Ring degree; ulysses = SP / ring.")
    parser.add_argument("--seq_parallel_ring_type", default="zigzag_ring", help="zigzag_ring | ring")
    parser.add_argument("--attn_backend", default="auto", help="auto | triton | flash_attn | torch")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="Model dtype. Default: bfloat16 on CUDA, float32 on CPU.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title", default=None, help="Heatmap title (default: task and model).")
    parser.add_argument("--disable_tqdm", action="store_true")
    parser.add_argument("--scoring", default="teacher_forced", choices=SCORING_MODES,
                        help="teacher_forced (one forward, argmax == answer) | generate (greedy, answer in output).")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="Generation length cap (--scoring generate).")
    return parser


def parse_config(parser: argparse.ArgumentParser, argv: Sequence[str], config_type: type, validate: Callable):
    """``config_type`` from the command line, checked by ``validate`` before any model is loaded."""
    cfg = config_type(**vars(parser.parse_args(list(argv))))
    validate(cfg)
    return cfg


def runtime_from_args(args) -> EvalRuntime:
    return load_runtime(args.model, args.seq_parallel_size, args.seq_parallel_ring_size,
                        args.seq_parallel_ring_type, args.attn_backend, args.dtype)


def base_config(args, runtime: EvalRuntime) -> dict:
    return {
        "model": runtime.model_path,
        "dtype": str(runtime.dtype).replace("torch.", ""),
        "device": str(runtime.device),
        "seq_parallel_size": runtime.sp_size,
        "seq_parallel_ring_size": args.seq_parallel_ring_size,
        "seq_parallel_ring_type": args.seq_parallel_ring_type,
        "data_parallel_size": runtime.dp_size,
        "depth_step": args.depth_step,
        "seed": args.seed,
        "scoring": args.scoring,
        "scoring_rule": SCORING_RULES[args.scoring],
        **({"max_new_tokens": args.max_new_tokens,
            "decoding": "kv_cache" if uses_kv_cache(runtime.layout) else "full_forward_per_token"}
           if args.scoring == "generate" else {}),
    }


def publish(spec: GridSpec, cells: list[dict], config: dict, cfg: EvalConfig, runtime: EvalRuntime,
            label: str) -> dict:
    """Summarise the cells; rank 0 writes the JSON and the heatmap and logs the mean accuracy."""
    results = summarize(spec, cells, config)
    if runtime.is_main:
        json_path, png_path = write_results(results, cfg.output_dir, cfg.title)
        logger.info("%s mean accuracy %.1f%% over %d samples; wrote %s and %s", label,
                    100 * results["mean_accuracy"], results["num_samples"], json_path, png_path)
    return results


def cli_main(prog: str, run: Callable[[Sequence[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run ``run(argv)`` through the console wrapper (bad requests: one line, exit code 2), timed and logged."""
    from longvila.console import run_console, setup_logging

    setup_logging(os.environ.get("RANK", "0"))  # torchrun: only rank 0 reports progress
    started = time.perf_counter()
    run_console(prog, run, argv)
    logger.info("%s finished in %.1f s", prog, time.perf_counter() - started)
