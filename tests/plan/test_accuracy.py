"""Predicted peak memory is within 10% of every measured point: the long-context memory benchmark's stored rows,
the long-video memory benchmark's old and new rows (stage 5, SP 1, SP 2 and 2D SP 4), and a live fp32 CPU stage-4
run of a real-shape probe made here."""

import json
from pathlib import Path

import pytest

from longvila.plan.measured import compare_benchmark_rows, compare_video_rows, live_comparison

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
BOUND = 0.10


def test_every_stored_measurement_is_predicted_within_10_percent():
    files = sorted(RESULTS.glob("cpu-*-long-context-memory*.json"))
    assert len(files) >= 3
    comparisons = [c for path in files for c in compare_benchmark_rows(json.loads(path.read_text()))]
    assert len(comparisons) >= 20
    worst = max(comparisons, key=lambda c: abs(c.error))
    assert abs(worst.error) <= BOUND, (worst.label, worst.tokens, worst.measured_gib, worst.predicted.peak_gib)
    # Both phases set the peak somewhere in the measured range, so both are checked.
    assert {c.predicted.peak_phase for c in comparisons} == {"backward", "optimizer step"}


VIDEO_RESULTS = {"cpu-2026-12-05-long-video-memory-sp1.json": (1, 1),
                 "cpu-2026-12-05-long-video-memory-sp2.json": (2, 1),
                 "cpu-2026-12-05-long-video-memory-sp4-ring2.json": (4, 2)}
"""``benchmarks/long_video_memory.py``'s files (``long_video_memory_sp<N>[_ring<R>].json``) for the probe
qwen2-0.5b-1L-siglip-1L, fp32 CPU, stage 5, with the (SP, ring) layout of their rows."""


@pytest.mark.parametrize("name", sorted(VIDEO_RESULTS))
def test_long_video_step_peaks_are_predicted_within_10_percent(name):
    """Every old (gather, unchunked tower) and new (route, 8-frame chunks) row, at every frame count; new_ahead
    rows are not predicted (``longvila.plan.measured.VIDEO_SYSTEMS``: loading ahead is host memory)."""
    path, (sp, ring) = RESULTS / name, VIDEO_RESULTS[name]
    if not path.is_file():
        flags = f"--sp {sp}" + (f" --ring {ring}" if ring > 1 else "")
        pytest.skip(f"{name} is not committed yet: run benchmarks/long_video_memory.py {flags} and copy its "
                    f"long_video_memory_sp{sp}{f'_ring{ring}' if ring > 1 else ''}.json there")
    rows = json.loads(path.read_text())["rows"]
    assert {(row["sp"], row["ring"]) for row in rows} == {(sp, ring)}
    comparisons = compare_video_rows(rows)
    for system in ("old", "new"):
        labels = {c.label for c in comparisons if f", {system}, " in c.label}  # one label per frame count
        assert len(labels) >= 2, f"{name}: {system} needs two frame counts, has {sorted(labels)}"
    worst = max(comparisons, key=lambda c: abs(c.error))
    assert abs(worst.error) <= BOUND, (worst.label, worst.measured_gib, worst.predicted.as_dict())


@pytest.mark.slow
def test_live_cpu_stage4_step_is_predicted_within_10_percent(probe_checkpoint, tmp_path, subprocess_env):
    """Qwen2-0.5B layer shapes with the real 151,936-token vocabulary (a shape no stored row measured), one decoder
    layer, fp32, one process, 1,024 tokens: about half a minute on two cores."""
    comparison = live_comparison(probe_checkpoint, tmp_path, env=subprocess_env)
    assert abs(comparison.error) <= BOUND, (comparison.predicted.as_dict(), comparison.measured_gib)
