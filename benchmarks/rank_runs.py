"""Launching one measured run on N CPU ranks, shared by the memory benchmarks.

Each run is a fresh process tree (``torchrun`` for N > 1, on a fresh port), the host's cores split evenly between
the ranks, so points measured one after the other do not inherit each other's allocator state or threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def launcher(sp: int) -> list[str]:
    """One process for SP=1, else ``torchrun`` on ``sp`` gloo ranks (a fresh port per run)."""
    if sp == 1:
        return [sys.executable]
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(sp), "--master_port", str(port)]


def run_ranks(command: list[str], sp: int, timeout: float) -> bool:
    """Run ``command`` with the cores split over ``sp`` ranks; False (stderr's tail printed) if it failed or timed
    out."""
    threads = max(1, (os.cpu_count() or 1) // sp)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    except subprocess.TimeoutExpired:
        return False
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
    return result.returncode == 0


def provenance() -> dict:
    """What a stored row needs to be reproduced: the exact command line and the commit it ran at (``+`` when the
    working tree had uncommitted changes)."""
    import shlex

    def git(*args: str) -> str:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")
    return {"command": shlex.join(["python", *sys.argv]), "commit": commit}


def run_measured_steps(command: list[str], metrics: Path, out: Path, sp: int, timeout: float) -> dict | None:
    """Run a two-step measured run (``run_ranks``) and read its JSON-lines ``metrics``: the second step's peaks
    (run and step, max over ranks) and seconds, both steps' losses and the run's wall seconds; None if it failed.
    The trained weights under ``out`` are deleted (the model is not the point; the disk stays free)."""
    started = time.perf_counter()
    if not run_ranks(command, sp, timeout):
        return None
    first, last = (json.loads(line) for line in metrics.read_text().splitlines()[:2])
    for weights in out.rglob("*.safetensors"):
        weights.unlink()
    return {"sp": sp, "peak_gb": last["max_memory_gb"], "step_peak_gb": last.get("step_peak_memory_gb"),
            "step_seconds": last["step_seconds"], "first_loss": first["loss"], "second_loss": last["loss"],
            "wall_s": time.perf_counter() - started}


def save_line_plot(series: dict[str, list[tuple[float, float]]], path, xlabel: str, ylabel: str, title: str) -> None:
    """One line per series (label -> (x, y) points) against a log2 x axis; empty series are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        if points:
            ax.plot(*zip(*sorted(points)), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
