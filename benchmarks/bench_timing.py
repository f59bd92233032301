"""Timing and recording shared by the benchmark files: medians of synchronised runs, and the ``extra_info`` every
benchmark records (device, baseline, baseline time and the ratio baseline / ours, > 1 meaning ours is faster)."""

from __future__ import annotations

import statistics
import time

import torch

ON_GPU = torch.cuda.is_available()


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def median_seconds(fn, rounds: int, warmup: int) -> float:
    """Median wall time of ``fn`` over ``rounds`` runs after ``warmup`` runs, the GPU synchronised around each."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_benchmark(benchmark, fn, rounds: dict) -> float:
    """Time ``fn`` with pytest-benchmark's pedantic mode; returns its median in seconds."""
    def timed():
        fn()
        sync()

    benchmark.pedantic(timed, **rounds)
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, untimed
        return median_seconds(fn, 1, 0)
    return benchmark.stats.stats.median


def sig(x: float) -> float:
    """Four significant digits (interpreter TFLOPS are tiny; GPU ones are not)."""
    return float(f"{x:.4g}")


def record(benchmark, ours_s: float, baseline_s: float, baseline_name: str, device_name: str | None = None,
           **extra) -> None:
    benchmark.extra_info.update(
        device=device_name or (torch.cuda.get_device_name() if ON_GPU else "cpu (triton interpreter)"),
        baseline=baseline_name,
        baseline_ms=sig(baseline_s * 1e3),
        ratio_vs_baseline=sig(baseline_s / ours_s),
        **extra,
    )
