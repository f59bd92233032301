"""Which measurements shaped the memory model (in sample) and which it never saw (held out).

The memory model (``longvila.plan.memory``) has four numbers that were fitted or set by looking at measurements,
not counted from the code (``FITTED_CONSTANTS``), and video terms that were counted from the code while looking at
one series. A claim about its accuracy is only worth something on measurements none of that looked at, so every
stored result file of the memory benchmarks is declared here as one or the other, and the error is reported and
tested for each side separately (``benchmarks/plan_accuracy.py``, ``tests/plan/test_accuracy.py``).

How a file was put on a side, from ``git log -- longvila/plan benchmarks/results`` and the commit messages:

- **In sample.** The 22 stored stage-4 rows of 2026-12-02/03 (Qwen2-1.5B 2L, Qwen2-7B 1L LoRA, SP 1 and Ulysses
  SP 2): all four constants were fitted or set on them and on one probe without a stored row (Qwen2-0.5B shapes,
  one layer, one process, ``FITTING_PROBES``) in commits 70a01bd and 51d4807. The long-video SP 2 rows (old and new
  MM-SP): the video terms were worked out while looking at them (13a93c3: "SP 2 in sample"). The SP 2 rerun with
  2-frame tower chunks: measured after the model, but at the same probe, layout and MM-SP path as those rows (the
  chunk only changes the vision-backward phase, which sets none of their predicted peaks), so it is not new data.
- **Held out.** The long-video SP 1 and 2D SP 4 (ring 2 x Ulysses 2) rows, predicted before they were measured
  (13a93c3), and the 2D rerun with 2-frame chunks; the tower rows (a SigLIP layer that runs, measured at 11:38
  after the video model of 11:20; no formula changed since); and every ``cpu-2026-12-05-plan-heldout*`` file,
  measured for this split after the constants were fixed, at configurations no constant was fitted on (a Llama-style
  shape with its 128,256-token vocabulary, more layers, a zigzag ring, ZeRO-3, LoRA on the tower), which
  ``tests/plan/test_accuracy.py`` checks against ``fitted_configurations``.

A file of the memory benchmarks that is on neither side fails ``tests/plan/test_accuracy.py``, so a new measurement
has to be declared before it counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from longvila.plan.measured import Comparison, benchmark_configuration, compare_benchmark_rows, compare_video_rows

MEMORY_RESULT_GLOBS = ("cpu-*-long-context-memory*.json", "cpu-*-long-video-memory*.json", "cpu-*-plan-heldout*.json")
"""Result files of the memory benchmarks in ``benchmarks/results`` (``plan-accuracy`` files are this comparison's own
output, not measurements)."""


@dataclass(frozen=True)
class FittedConstant:
    name: str
    value: float
    fitted_on: str
    commit: str


FITTED_CONSTANTS = (
    FittedConstant("hardware.cpu_device runtime_gib", 0.6, "optimizer-step peaks of the Qwen2-7B 1L LoRA rows and "
                   "the Qwen2-0.5B 1L one-process probe, together with OPTIMIZER_STEP_BYTES", "70a01bd"),
    FittedConstant("memory.OPTIMIZER_STEP_BYTES", 9.5, "the same two probes' optimizer-step peaks", "70a01bd"),
    FittedConstant("memory.NAIVE_LOSS_FP32_COPIES", 2.5, "the naive rows of cpu-2026-12-02-long-context-memory.json "
                   "(9.4 to 10.6 bytes per logit)", "70a01bd"),
    FittedConstant("memory.LAYER_TRANSIENT['mlp']", 6, "the chunked and default rows at 2026-12-02/03 (set from 4)",
                   "51d4807"),
)
"""The numbers of the memory model that were fitted or set by looking at measurements, and on what."""

FITTING_FILES = (
    "cpu-2026-12-02-long-context-memory.json",
    "cpu-2026-12-03-long-context-memory-qwen2-7b-1L-lora.json",
    "cpu-2026-12-03-long-context-memory-sp2.json",
    "cpu-2026-12-03-long-context-memory-sp2-step-peak.json",
    "cpu-2026-12-05-long-video-memory-sp2.json",
    "cpu-2026-12-05-long-video-memory-sp2-chunk2.json",
)
FITTING_PROBES = (("qwen2-0.5b", 1, False, 1, 1, "zero2"),)
"""Configurations (``measured.benchmark_configuration``) a constant was fitted on without a stored row: the
Qwen2-0.5B-shape probe with one decoder layer in one process (the CI live probe until 2026-12-05)."""
HELD_OUT_FILES = (
    "cpu-2026-12-05-long-video-memory-sp1.json",
    "cpu-2026-12-05-long-video-memory-sp1-chunk2.json",
    "cpu-2026-12-05-long-video-memory-sp1-tower.json",
    "cpu-2026-12-05-long-video-memory-sp4-ring2.json",
    "cpu-2026-12-05-long-video-memory-sp4-ring2-chunk2.json",
)
HELD_OUT_PREFIX = "cpu-2026-12-05-plan-heldout"
"""Files measured for this split (``benchmarks/plan_heldout.sh``): held out by construction."""


def memory_result_files(results: Path) -> list[Path]:
    return sorted({path for pattern in MEMORY_RESULT_GLOBS for path in Path(results).glob(pattern)})


def side(name: str) -> str | None:
    """``"in sample"``, ``"held out"`` or None (undeclared) for a result file's name."""
    if name in FITTING_FILES:
        return "in sample"
    if name in HELD_OUT_FILES or name.startswith(HELD_OUT_PREFIX):
        return "held out"
    return None


def compare_file(path: Path) -> list[Comparison]:
    """Predicted against measured for every row of ours in a memory benchmark file: long-video files are
    ``{"rows": [...]}`` (``compare_video_rows``), long-context files a list of rows (``compare_benchmark_rows``)."""
    data = json.loads(Path(path).read_text())
    return compare_video_rows(data["rows"]) if isinstance(data, dict) else compare_benchmark_rows(data)


def split_comparisons(results: Path) -> dict[str, list[tuple[str, Comparison]]]:
    """``{"in sample": [(file name, comparison), ...], "held out": [...]}`` over every declared file; raises on a
    file that is on neither side."""
    out: dict[str, list[tuple[str, Comparison]]] = {"in sample": [], "held out": []}
    for path in memory_result_files(results):
        where = side(path.name)
        if where is None:
            raise ValueError(f"{path.name} is neither in sample nor held out: declare it in longvila/plan/heldout.py")
        out[where] += [(path.name, c) for c in compare_file(path)]
    return out


def fitted_configurations(results: Path) -> set[tuple]:
    """Every stage-4 configuration (``measured.benchmark_configuration``) a constant was fitted on: the in-sample
    long-context rows' and ``FITTING_PROBES``."""
    configs = set(FITTING_PROBES)
    for name in FITTING_FILES:
        data = json.loads((Path(results) / name).read_text())
        if isinstance(data, list):
            configs |= {benchmark_configuration(row) for row in data}
    return configs


def video_configuration(row: dict) -> tuple:
    """(probe, tower LoRA, SP, ring, MM-SP path) of a long-video benchmark row."""
    from longvila.plan.measured import VIDEO_SYSTEMS

    return (row.get("probe") or "qwen2-0.5b-1L-siglip-1L", bool(row.get("lora_vision")), row.get("sp") or 1,
            row.get("ring") or 1, VIDEO_SYSTEMS.get(row["system"], {}).get("mmsp"))
