"""What every evaluation command shares: flags, one-line errors, the run, and publishing its results."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from longvila.config import flag
from longvila.eval.grid import GridSpec, depth_values
from longvila.errors import EvalError
from longvila.eval.report import summarize, write_results
from longvila.eval.runtime import DTYPES, EvalRuntime, check_model_dir, load_runtime
from longvila.eval.scoring import SCORING_MODES, SCORING_RULES, uses_kv_cache

logger = logging.getLogger("longvila.eval")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`EvalError` (one line, exit code 2 in :func:`cli_main`)."""

    def error(self, message: str):
        raise EvalError(message)


class EvalArgumentParser(HfArgumentParser, OneLineParser):
    """The flags of an evaluation's config dataclass (``HfArgumentParser``), with :class:`OneLineParser`'s errors."""


@dataclass(kw_only=True)
class EvalConfig:
    """What every evaluation takes; each task's config adds its grid. The fields are the command-line flags."""

    output_dir: Path = field(metadata={"help": "Where the JSON and the heatmap go."})
    model: str | None = flag(None, "VILA-layout checkpoint folder (any stage's output). Default: the embedded tiny "
                             "model.")
    depth_step: float = flag(10.0, "Depth grid step in percent (0..100).")
    seq_parallel_size: int = flag(1, "SP degree (launch with torchrun).")
    seq_parallel_ring_size: int = flag(1, "Ring degree; ulysses = SP / ring.")
    seq_parallel_ring_type: str = flag("zigzag_ring", "zigzag_ring | ring")
    attn_backend: str = flag("auto", "auto (Triton on CUDA, torch elsewhere) | triton | flash_attn | torch | math")
    dtype: str | None = flag(None, "Model dtype. Default: bfloat16 on CUDA, float32 on CPU.", choices=sorted(DTYPES))
    seed: int = 0
    title: str | None = flag(None, "Heatmap title (default: task and model).")
    disable_tqdm: bool = False
    scoring: str = flag("teacher_forced", "teacher_forced (one forward, argmax == answer) | generate (greedy, answer "
                        "in output).", choices=SCORING_MODES)
    max_new_tokens: int = flag(16, "Generation length cap (--scoring generate).")


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


def parse_config(prog: str, description: str, config_type: type, validate: Callable, argv: Sequence[str]):
    """``config_type`` (an :class:`EvalConfig`) from the command line, checked by ``validate`` before any model is
    loaded."""
    parser = EvalArgumentParser(config_type, prog=prog, description=description, allow_abbrev=False)
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
