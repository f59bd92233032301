"""Per-step metrics: one JSON line per optimizer step plus TensorBoard events (rank 0 only)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any, Optional

import torch

METRIC_KEYS = ("step", "loss", "num_tokens", "num_positions", "learning_rate", "grad_norm", "tokens_per_sec", "step_seconds",
               "max_memory_gb", "step_peak_memory_gb", "data_seconds", "decode_seconds")


def host_peak_memory_gb() -> float:
    """Resident-set peak of this process (``ru_maxrss``: bytes on macOS, KiB elsewhere), in GiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def max_memory_gb(device: torch.device) -> float:
    """Peak memory of this process since the start or the last ``reset_peak_memory``: CUDA allocator peak on GPU,
    resident-set peak on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return host_peak_memory_gb()


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak window, so a step's own peak can be read apart from loading and set-up.

    On CPU this resets the kernel's resident-set high-water mark (Linux ``/proc/self/clear_refs``, which
    ``ru_maxrss`` follows); returns False where that is not possible (other systems), and the peak then keeps
    counting from the start of the process.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemoryWindows:
    """A step's own peak memory and the run's peak so far, on one device.

    ``begin_step`` folds whatever came before (loading, set-up, earlier steps, saves) into the run's peak and
    resets the device's peak; ``end_step`` returns ``(run_peak, step_peak)``. Shared by the trainer and the ALST
    runner in benchmarks/alst_step.py, so both report memory the same way.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.run_peak = 0.0

    def begin_step(self) -> None:
        self.run_peak = max(self.run_peak, max_memory_gb(self.device))
        reset_peak_memory(self.device)

    def end_step(self) -> tuple[float, float]:
        step_peak = max_memory_gb(self.device)
        self.run_peak = max(self.run_peak, step_peak)
        return self.run_peak, step_peak


def truncate_step_log(path: Path, resume_step: Optional[int]) -> None:
    """A per-step JSON-lines log for a run that starts (``resume_step`` None: emptied) or resumes (lines past
    ``resume_step`` dropped, so the replayed steps are not logged twice); ``metrics.jsonl`` and the sample log."""
    if resume_step is None:
        path.write_text("")
    elif path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))


class MetricsLogger:
    """Writes ``metrics.jsonl`` and TensorBoard scalars; a resumed run truncates lines past its step."""

    def __init__(self, output_dir: Path, enabled: bool, resume_step: Optional[int] = None):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_step_log(self.path, resume_step)
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        missing = [key for key in METRIC_KEYS if key not in record]
        if missing:
            raise KeyError(f"metrics record lacks {missing}")
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"train/{key}", value, record["step"])
            elif isinstance(value, dict):  # e.g. samples_per_source: one curve per source
                for sub, number in value.items():
                    self._writer.add_scalar(f"train/{key}/{sub}", number, record["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    """Load ``metrics.jsonl`` back (tests, pipeline summaries)."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
